"""MLflow models-from-code loader of a Lethe version (MLflow: "Models from Code").

This file is what MLflow stores as the model's code: no pickled object anywhere. At load
time ``load_context`` reads the safetensors artifact ``weights`` and rebuilds the network
from the architecture recorded in the file's own metadata with Lethe's ML core (``models``,
shipped beside it as ``code_paths``), so ``mlflow.pyfunc.load_model("models:/NAME@production")``
needs torch and safetensors, not Lethe's service. ``predict`` takes inputs shaped like the
model's input (or flattened) and returns class probabilities.
"""
import mlflow
from mlflow.pyfunc import PythonModel


class LetheSafetensorsModel(PythonModel):
    def load_context(self, context):
        from models.checkpoint import load_checkpoint

        self.model, self.meta = load_checkpoint(context.artifacts["weights"], device="cpu")
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        x = np.asarray(model_input, dtype=np.float32)
        shape = tuple(self.meta["input_shape"])
        x = x.reshape((-1, *shape))
        with torch.no_grad():
            return torch.softmax(self.model(torch.from_numpy(x)), dim=1).numpy()


mlflow.models.set_model(LetheSafetensorsModel())
