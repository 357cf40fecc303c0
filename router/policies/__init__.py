"""The built-in policies; importing this package registers them."""
from router.policies import round_robin  # noqa: F401
