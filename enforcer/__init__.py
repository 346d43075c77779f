"""port25-enforcer: a lab gateway that blocks outbound SMTP (TCP 25) like Azure's platform."""

__version__ = "0.1.0"
