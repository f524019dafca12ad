"""The plugin contract: the hooks a featureforge plugin may implement.

Every hook receives a callable and registers things with it, in the style of pytest and
simonw/llm. A plugin is any module or object with functions marked ``@featureforge.hookimpl``,
exposed through an entry point in the group ``featureforge``::

    [project.entry-points.featureforge]
    my_plugin = "my_package.plugin"

``docs/plugins.md`` is the guide for plugin authors; these docstrings are the reference.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("featureforge")
hookimpl = pluggy.HookimplMarker("featureforge")


@hookspec
def featureforge_register_sources(register: Callable[[type], None]) -> None:
    """Register activation sources (subclasses of ``featureforge.ActivationSource``).

    :param register: call ``register(SourceClass)`` once per class. A name the core uses is
        refused; a name another distribution also registers goes to neither (the user picks one
        as ``DIST:NAME`` or with ``FEATUREFORGE_PREFER``); an ``Options`` field of a type the option
        parser cannot read refuses the class. See docs/plugins.md, "Name resolution".

    Called once, the first time any source is looked up. Example::

        @featureforge.hookimpl
        def featureforge_register_sources(register):
            register(MySource)
    """


@hookspec
def featureforge_register_trainers(register: Callable[[type], None]) -> None:
    """Register dictionary trainers (subclasses of ``featureforge.DictionaryTrainer``).

    :param register: call ``register(TrainerClass)`` once per class; names as for sources.

    Called once, the first time any trainer is looked up. Example::

        @featureforge.hookimpl
        def featureforge_register_trainers(register):
            register(MyTrainer)
    """


@hookspec
def featureforge_register_evaluators(register: Callable[[type], None]) -> None:
    """Register evaluators (subclasses of ``featureforge.Evaluator``).

    :param register: call ``register(EvaluatorClass)`` once per class; names as for sources.

    Called once, the first time any evaluator is looked up. Example::

        @featureforge.hookimpl
        def featureforge_register_evaluators(register):
            register(MyEvaluator)
    """


@hookspec
def featureforge_register_commands(cli: Any) -> None:
    """Add click commands to the ``featureforge`` command line.

    :param cli: the top-level ``click.Group``; call ``cli.command()`` or ``cli.add_command``.

    Called once when the command line is built. Import heavy libraries inside the command
    function, not at module level, so ``featureforge --help`` stays fast. Example::

        @featureforge.hookimpl
        def featureforge_register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello")
    """
