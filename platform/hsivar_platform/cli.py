"""The ``hsivar`` console script: the model library's commands plus the Ray platform's.

``hsivar.cli`` holds the commands that need only the model library (info, convert-var, data);
this module adds the platform's commands to the same app, so imports keep pointing one way
(``hsivar_platform → hsivar``). Platform commands import Ray lazily, inside the command.
"""

from __future__ import annotations

from hsivar.cli import app
from hsivar_platform.commands_demo import register as register_demo_commands
from hsivar_platform.commands_serve import register as register_serve_commands
from hsivar_platform.commands_train import register as register_train_commands

register_serve_commands(app)
register_train_commands(app)
register_demo_commands(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
