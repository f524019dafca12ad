"""featureforge-demo: ``featureforge demo``, the whole pipeline on embedded defaults.

An application of the plugins, not a plugin of methods: it registers one command and uses the hf
source and evaluators, the sae trainers, the multifaceted plugin's context collection and (for
``--causal``) the testbeds' tiny stdlib GPT-2 through their public faces.
"""

from __future__ import annotations

from typing import Any

import featureforge


@featureforge.hookimpl
def featureforge_register_commands(cli: Any) -> None:
    from .app import demo_command

    cli.add_command(demo_command)
