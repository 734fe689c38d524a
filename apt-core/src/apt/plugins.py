"""The plugin manager and fault-isolated hook dispatch.

pluggy registers plugins and validates their hooks against :mod:`apt.hookspecs`; dispatch
walks the implementations itself (in pluggy's order) so that one plugin raising does not take
the others' hooks down with it: the failing plugin is reported, recorded, and unregistered for
the rest of the run, unless it is ``required``, in which case :class:`PluginHookError` stops
the run.

Hook-only plugins take options from their ``plugins.<name>`` profile section: an entry point
naming a class that declares a ``Config`` dataclass is constructed as ``cls(config)``, the config
built from that section; a class without one as ``cls()``; any other object (a module, an
instance) is registered as it is and takes no options. ``plugins.<name>.enabled: false`` keeps a
plugin unregistered; a plugin that should only run when asked sets ``default_enabled = False``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from apt import hookspecs
from apt.config import build
from apt.errors import ConfigError, PluginHookError

if TYPE_CHECKING:
    from apt.profile import Profile

log = logging.getLogger("apt")

PLUGIN_GROUP = "apt.plugins"

#: Called with (plugin name, hook name, exception, traceback text) when a hook fails.
FailureSink = Callable[[str, str, BaseException, str], None]
#: Called with (plugin name, hook name) around each hook implementation while a profiler listens.
Probe = Callable[[str, str], AbstractContextManager[object]]


class PluginHost:
    def __init__(self, required: Iterable[str] = (), on_failure: FailureSink | None = None) -> None:
        self.pm = pluggy.PluginManager("apt")
        self.pm.add_hookspecs(hookspecs)
        self.required = set(required)
        self.disabled: dict[str, str] = {}
        #: Installed hook-only plugins left unregistered because they are not enabled.
        self.off: set[str] = set()
        self._on_failure = on_failure
        #: Set by :class:`apt.profiler.StepProfiler` only; None keeps dispatch free of timing.
        self.probe: Probe | None = None

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

    def load_entry_points(self, profile: Profile | None = None) -> None:
        """Register hook-only plugins from the ``apt.plugins`` entry-point group, each configured
        from ``profile.plugins.<name>`` (defaults without a profile).

        A bad option raises :class:`ConfigError` (the user's to fix, so the run stops); a plugin
        that fails to import or construct is reported and skipped like a failing hook.
        """
        installed = installed_plugins()
        if profile is not None:
            for name, wants in profile.plugins.items():
                if wants.enabled and name not in installed:
                    log.warning("plugins.%s.enabled is true but no hook-only plugin %r is installed "
                                "(installed: %s)", name, name, ", ".join(sorted(installed)) or "none")
        for ep in installed.values():
            if self.pm.has_plugin(ep.name) or ep.name in self.disabled:
                continue
            policy = profile.plugins.get(ep.name) if profile is not None else None
            try:
                obj = ep.load()
                wanted = policy.enabled if policy is not None and policy.enabled is not None \
                    else getattr(obj, "default_enabled", True) is not False
                if not wanted:
                    self.off.add(ep.name)
                    continue
                self.register(instantiate_plugin(obj, ep.name, profile), ep.name)
            except ConfigError:
                raise
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
            if self.probe is not None:
                with self.probe(impl.plugin_name, hook):
                    return impl.function(*[kwargs[arg] for arg in impl.argnames])
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


def installed_plugins() -> dict[str, EntryPoint]:
    """Hook-only plugins installed in this environment, by entry-point name."""
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def check_plugin_options(obj: object, name: str, profile: Profile | None) -> Any:
    """The validated config of plugin ``name`` (None when it declares no ``Config``).

    A plugin without a ``Config`` accepts only APT's policy keys, as before plugins had options.
    """
    config_cls = getattr(obj, "Config", None)
    policy = profile.plugins.get(name) if profile is not None else None
    if config_cls is None:
        if policy is not None and policy.options:
            key = next(iter(policy.options))
            raise ConfigError(f"plugins.{name}.{key}", f"unknown key; plugin {name!r} takes no options "
                                                       f"(only required, enabled)")
        return None
    if not isinstance(obj, type):
        raise TypeError(f"plugin {name!r} declares a Config but its entry point is not a class; "
                        f"point the entry point at the class so APT can construct it with its config")
    if profile is None:
        return build(config_cls, {}, f"plugins.{name}")
    return profile.plugin_config(name, config_cls)


def instantiate_plugin(obj: object, name: str, profile: Profile | None) -> object:
    """What to register for an entry-point object: a class constructed (with its config when it
    declares one), anything else as it is."""
    config = check_plugin_options(obj, name, profile)
    if not isinstance(obj, type):
        return obj
    return obj(config) if config is not None else obj()
