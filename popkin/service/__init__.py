"""``popkin serve``: the dosing web application and its JSON API, over the same functions as the
command line, with a database of patients, recommendations, users and their audit trail."""


class ServiceError(ValueError):
    """A setting, account, record or request the service refuses; the message says which and
    why (the command line prints it as one line)."""
