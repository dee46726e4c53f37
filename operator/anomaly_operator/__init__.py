"""The anomaly operator: reconciles AnomalyPipeline resources into streams, IAM roles and a processor.

Importing this package registers the handlers in kopf's default registry, which is what
``kopf run -m anomaly_operator`` needs; settings are read from the environment when the
operator starts. Tests register the handlers in their own registry with
``anomaly_operator.handlers.register``.
"""

import kopf

from anomaly_operator.handlers import register

register(kopf.get_default_registry())
