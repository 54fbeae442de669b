"""The aiortc business media peer moved into the pytest plugin: :mod:`wacall.testing.peer`. This name stays
for test modules that still import it from here (new code: ``from wacall.testing.peer import ...``)."""

from support.harness import take_user_call  # noqa: F401
from wacall.testing.peer import *  # noqa: F401,F403
from wacall.testing.peer import AiortcBusiness, ToneTrack  # noqa: F401
