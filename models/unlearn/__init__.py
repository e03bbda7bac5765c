"""Unlearning methods: the catalogue. Every method, model family and objective Lethe offers
is registered here, once, with its metadata; the API's enums, the CLI's choices and
docs/methods.md are derived from it. The interface and how to add a method:
``models/unlearn/registry.py``. Registering imports nothing heavy; a method's module is
imported the first time ``get_method`` asks for it.

Layers (imports point down only):
    lethe.py, puma.py, baselines.py,           the methods (lethe.py: Lethe's own instance-wise
      sisa.py, arcane.py                         method; it may use the paper's adversarial examples)
    paper.py                                   Cha et al.'s instance-wise recipe and its ablations
    shards.py, common.py                       what SISA and ARCANE share (plans, slices, bundles);
                                                 what both instance-wise methods share
    oneclass.py                                ARCANE's one-class learners and aggregations
    registry.py                                the interface and the catalogue
"""
from __future__ import annotations

from .registry import (DEFAULT_OBJECTIVE, FAMILIES, METHODS, OBJECTIVES, Family, Method, MethodInfo, ProgressFn,  # noqa: F401
                       UnlearnRequest, UnlearnResult, family_names, get_family, get_method, method_info,
                       method_names, methods_for, must_reach, register, register_choice, register_family,
                       resolve)

ALL = OBJECTIVES
INFLUENCE = ("misclassify", "retrain_like")  # removes the data's influence: cannot teach a target label

# --- model families -------------------------------------------------------------------------
register_family("instance", sharded=False, default_method="instance",
                description="one checkpoint, trained any way; deletions edit its weights (approximate unlearning)")
register_family("sisa", sharded=True, default_method="sisa",
                description="SISA ensemble: one model per shard, trained slice by slice with checkpoints")
register_family("arcane", sharded=True, default_method="arcane",
                description="ARCANE ensemble: one one-class sub-model per class, trained block by block")

# --- methods --------------------------------------------------------------------------------
register("lethe", "models.unlearn.lethe:lethe", family="instance", objectives=ALL, needs_retained_data=True,
         exact=False, description="Lethe's default: bounded per-instance edit of the network's tail with teacher "
                                  "replay of retained data; the whole network only if needed")
register("paper_full", "models.unlearn.paper:paper_full", family="instance", objectives=ALL,
         needs_retained_data=False, exact=False,
         description="Cha et al. (AAAI 2024) as published: gradient ascent + adversarial examples + "
                     "inverted MAS importance anchor, until every instance is misclassified")
register_choice("instance", with_retained="lethe", without_retained="paper_full",
                description="the instance family's default: `lethe` when the service holds the retained data, "
                            "`paper_full` otherwise")
register("paper_ga", "models.unlearn.paper:paper_ga", family="instance", objectives=ALL,
         needs_retained_data=False, exact=False,
         description="Cha et al. ablation: gradient ascent on the forget set only")
register("paper_ga_adv", "models.unlearn.paper:paper_ga_adv", family="instance", objectives=ALL,
         needs_retained_data=False, exact=False,
         description="Cha et al. ablation: gradient ascent + adversarial examples (no importance anchor)")
# PUMA is not near retraining under full U-LiRA (bench/results/ulira.json, docs/unlearning.md):
# callable for study, never the way a deletion is served (the planner retrains instead)
register("puma", "models.unlearn.puma:puma_unlearn", family="instance", objectives=INFLUENCE,
         needs_retained_data=True, exact=False, reaches_objective=False, serves_deletions=False,
         description="PUMA (Wu et al., AAAI 2022): influence-function patch of the last layer, retained data "
                     "reweighted so performance holds; no retraining")
register("sisa", "models.unlearn.sisa:sisa", family="sisa", objectives=INFLUENCE, needs_retained_data=True,
         exact=True, reaches_objective=False,
         description="SISA (Bourtoule et al., S&P 2021): retrain only the shards holding the instances, "
                     "from the last slice checkpoint before them")
# ARCANE's deletions are exact whatever the data; what its one-class sub-models give up is
# accuracy, and on tabular rows that loss is larger than on images (bench/results/exact.json).
# There SISA is both closer to the monolithic model (85.7 % on adult) and faster than retraining,
# so a new ARCANE model on tabular data is refused; on images it is within 1 point.
register("arcane", "models.unlearn.arcane:arcane", family="arcane", objectives=INFLUENCE, needs_retained_data=True,
         exact=True, reaches_objective=False,
         description="ARCANE (Yan et al., IJCAI 2022): retrain only the one-class sub-models of the instances' "
                     "classes, from the last block checkpoint before them",
         caveats={"tabular": "one-class sub-models classify below one network trained on every class: on adult "
                             "83.0-83.3 % after 1, 10 and 100 deletions against 85.9 % for the monolithic MLP "
                             "(2.6-2.9 points below, mean of seeds 0-2), and a deletion is slower than retraining "
                             "the MLP (0.3-0.5x wall; with 2 classes it retrains a sub-model holding 24-76 % of "
                             "the rows): bench/results/exact.json; SISA (S=10) stays within 0.2 points and is "
                             "1.1-19.6x faster than retraining there"},
         not_offered=("tabular",))

# --- the field's baselines (models/unlearn/baselines.py) and exact retraining ---------------
# They train on D_r for a fixed budget and have no goal of their own, so no objective is
# "reached" and the worker judges them like retraining (reaches_objective=False).
for _name, _desc in [
    ("finetune", "FT baseline (Jia et al. NeurIPS 2023; SalUn): fine-tune on the retained data only"),
    ("neggrad_plus", "NegGrad+ (Kurmanji et al. NeurIPS 2023): descend on retained data while ascending on the "
                     "forget set, weighted"),
    ("random_labels", "RL baseline (Golatkar et al. 2020, as in SalUn): random labels on the forget set, replay of "
                      "retained data"),
    ("l1_sparse", "l1-sparse (Jia et al. NeurIPS 2023): fine-tune on retained data with a decaying l1 penalty"),
    ("scrub", "SCRUB (Kurmanji et al. NeurIPS 2023): student moves away from the teacher on the forget set, "
              "towards it (plus the task loss) on retained data"),
    ("salun", "SalUn (Fan et al. ICLR 2024): random-label unlearning restricted to the weights salient to "
              "the forget loss"),
]:
    register(_name, f"models.unlearn.baselines:{_name}", family="instance", objectives=INFLUENCE,
             needs_retained_data=True, exact=False, reaches_objective=False, description=_desc)
register("retrain", "models.unlearn.baselines:retrain", family="instance", objectives=INFLUENCE,
         needs_retained_data=True, exact=True, reaches_objective=False,
         description="exact by construction: the same architecture trained from scratch on the retained data "
                     "with the served recipe (models/train.py)")
