"""wacall: a self-hosted emulator of the WhatsApp Business Calling platform."""

__version__ = "0.1.0"
