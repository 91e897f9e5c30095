"""Values the application and its migrations share."""

ORDER_STATES = ("new", "paid", "shipped", "cancelled")
TICKET_STATES = ("open", "closed")
DEFAULT_CURRENCY = "EUR"
