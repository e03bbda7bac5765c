"""Import every table so ``Base.metadata`` is complete (Alembic, tests)."""
from .audit.models import AuditEvent  # noqa: F401
from .catalogue.models import TrainingInstance  # noqa: F401
from .datasets.models import Dataset  # noqa: F401
from .db import Base  # noqa: F401
from .forget.models import ErasureGroup, ForgetRequest  # noqa: F401
from .jobs.models import Job  # noqa: F401
from .registry.models import (AliasMove, ModelAlias, ModelVersion, RegisteredModel, RetrainOrder,  # noqa: F401
                              RowRisk, SealedProbe, TrainingRun)
from .security.models import ApiKey  # noqa: F401
from .events.models import RegistryEvent, Subscription  # noqa: F401
from .webhooks.models import WebhookDelivery  # noqa: F401
from .tenants.models import Tenant, TenantModel  # noqa: F401
