"""The ferry.dev/v1alpha1 API: pydantic models that are the single source of truth for the CRDs."""

GROUP = "ferry.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
