"""Values the application and its migrations share."""

ORDER_STATES = ("new", "paid", "shipped", "cancelled")
DEFAULT_COUNTRY = "DE"
CARRIERS = ("dhl", "ups", "post")
