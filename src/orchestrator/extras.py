"""Optional dependencies: the SDKs behind S3 object stores and the model providers.

Each is an extra of the package (``pip install 'orchestrator[s3]'``) and is imported only
where it is used, so a plain install runs plans on local stores with the scripted
provider. :func:`require` is called before such an import: a missing SDK is then one
paragraph naming the extra to install (:class:`~orchestrator.errors.MissingExtra`), not an
``ImportError`` from deep inside.
"""

from __future__ import annotations

import importlib

from orchestrator.errors import MissingExtra

EXTRAS = {"boto3": "s3", "anthropic": "anthropic", "openai": "openai"}
"""Each optional module, and the extra that installs it."""


def require(module: str, feature: str) -> None:
    """Import ``module`` (a key of :data:`EXTRAS`) for ``feature``, or raise MissingExtra."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingExtra(feature, module, EXTRAS[module]) from None
