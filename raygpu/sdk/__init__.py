"""The SDK users import (through `raygpu`): apps and decorators, the client that calls deployed
functions, spawned calls, batches, errors, the app loader, and the plumbing the client attaches
with (connection, handles to the control plane, RAYGPU_HOME, the admin credential)."""
