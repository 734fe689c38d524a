"""The plugin manager and fault-isolated hook dispatch.

pluggy registers plugins and validates their hooks against :mod:`apt.hookspecs`; dispatch
walks the implementations itself (in pluggy's order) so that one plugin raising does not take
the others' hooks down with it: the failing plugin is reported, recorded, and unregistered for
the rest of the run, unless it is ``required``, in which case :class:`PluginHookError` stops
the run.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from apt import hookspecs
from apt.errors import PluginHookError

log = logging.getLogger("apt")

PLUGIN_GROUP = "apt.plugins"

#: Called with (plugin name, hook name, exception, traceback text) when a hook fails.
FailureSink = Callable[[str, str, BaseException, str], None]


class PluginHost:
    def __init__(self, required: Iterable[str] = (), on_failure: FailureSink | None = None) -> None:
        self.pm = pluggy.PluginManager("apt")
        self.pm.add_hookspecs(hookspecs)
        self.required = set(required)
        self.disabled: dict[str, str] = {}
        self._on_failure = on_failure

    def register(self, plugin: object, name: str) -> None:
        """Register ``plugin``'s hooks; an ``apt_*`` callable that is not a valid hook is an error.

        pluggy alone would skip an undecorated ``apt_step_end`` silently, and accept a typo'd
        hook name until ``check_pending``: both are refused here, naming the fix.
        """
        for attr in dir(plugin):
            if not attr.startswith("apt_") or not callable(getattr(plugin, attr, None)):
                continue
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                raise ValueError(f"plugin {name!r}: {attr} is not decorated with @apt.hookimpl")
            if opts.get("hookwrapper") or opts.get("wrapper"):
                raise ValueError(f"plugin {name!r}: hook wrappers are not supported ({attr})")
            if not hasattr(hookspecs, attr):
                raise ValueError(f"plugin {name!r}: {attr} is not an apt hook (see apt.hookspecs)")
        self.pm.register(plugin, name=name)

    def load_entry_points(self) -> None:
        """Register hook-only plugins from the ``apt.plugins`` entry-point group."""
        for ep in entry_points(group=PLUGIN_GROUP):
            if self.pm.has_plugin(ep.name) or ep.name in self.disabled:
                continue
            try:
                self.register(ep.load(), ep.name)
            except Exception as err:
                self._fail(ep.name, "load", err)

    def names(self) -> list[str]:
        return sorted(n for n, _ in self.pm.list_name_plugin())

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of ``hook``; return the non-None results."""
        return list(self.call_each(hook, **kwargs).values())

    def call_each(self, hook: str, **kwargs: Any) -> dict[str, Any]:
        """Call every implementation of ``hook`` in pluggy's order; non-None results by plugin."""
        results = {}
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            result = self._invoke(impl, hook, kwargs)
            if result is not None:
                results[impl.plugin_name] = result
        return results

    def call_one(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call plugin ``name``'s implementation of ``hook``, if it has one."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == name:
                return self._invoke(impl, hook, kwargs)
        return None

    def _invoke(self, impl: Any, hook: str, kwargs: dict[str, Any]) -> Any:
        try:
            return impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception as err:
            self._fail(impl.plugin_name, hook, err)
            return None

    def _fail(self, name: str, hook: str, err: Exception) -> None:
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        if self._on_failure is not None:
            self._on_failure(name, hook, err, text)
        if name in self.required:
            raise PluginHookError(name, hook, err) from err
        self.disabled[name] = f"{hook}: {err!r}"
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        log.warning("plugin %r raised in %s (%r); disabled for the rest of this run", name, hook, err)
