"""featureforge-demo: ``featureforge demo``, the whole pipeline on embedded defaults.

An application of the plugins, not a plugin of methods: it registers one command and uses the hf
source and evaluators, the sae trainers and the multifaceted plugin's context collection through
their public faces.
"""

from __future__ import annotations

from typing import Any

import featureforge


@featureforge.hookimpl
def featureforge_register_commands(cli: Any) -> None:
    from .app import demo_command

    cli.add_command(demo_command)
