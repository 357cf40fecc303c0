"""The built-in policies; importing this package registers them."""
from router.policies import andes, classic_goodput, least_loaded, round_robin, smooth_goodput  # noqa: F401
