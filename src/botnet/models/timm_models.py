"""botnet models in timm's registry: ``timm.create_model("botnet50")`` after ``import botnet``.

timm is optional (the ``[timm]`` extra). Once both ``botnet`` and ``timm``
are imported, in either order, :func:`register_timm_models` has added one
timm entrypoint per botnet model, with a timm-style pretrained config (input
size, mean/std, ``first_conv="conv1"``, ``classifier="fc"``, no weights).
``import botnet`` does not import timm itself (that would double its import
time): it registers at once if timm is already imported, else right after
timm's own import, through an import hook. timm then builds
the model with its own ``build_model_with_cfg``, so ``features_only=True``,
``out_indices``, ``checkpoint_path=``, ``timm.data.resolve_data_config``
and ``model.reset_classifier`` work as for timm's ResNets.

Names: a botnet model named ``botnet*`` keeps its name in timm; any other
(``resnet50``, ``resnet26``, ``resnet_tiny``) gets the prefix ``botnet_``,
because timm already has its own ``resnet50`` and ``resnet26``. So
``timm.create_model("botnet_resnet50")`` is botnet's (torchvision-exact)
ResNet-50 and ``timm.create_model("resnet50")`` stays timm's. A name that
timm already uses for a model of its own is never overwritten: it is skipped
with a warning. :data:`TIMM_NAMES` maps botnet names to the timm names
registered.

``features_only=True`` uses timm's ``FeatureListNet`` over the model's
``feature_info``: four maps, c2..c5 (``out_indices`` 0..3, strides 4, 8,
16, 32 for the ImageNet stem), unlike timm's ResNets whose index 0 is the
stem at stride 2. ``feature_cls="dict"``, ``"hook"``, ``"getter"``
(:meth:`~botnet.BoTNet.forward_intermediates` on a model pruned by
``prune_intermediate_layers``) and ``"fx"`` (torch.fx) work too and give
the same maps. Every create option of timm's ResNets that botnet models
share is passed through: ``num_classes``, ``in_chans``, ``global_pool``,
``drop_rate``, and any :class:`~botnet.ModelSpec` field.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["TIMM_NAMES", "timm_name", "register_timm_models", "register_if_timm_installed", "pretrained_cfg"]

#: botnet model name -> the name it is registered under in timm (filled by
#: :func:`register_timm_models`).
TIMM_NAMES: dict[str, str] = {}

# timm's register_model looks the configs up on the entrypoint's module by name.
default_cfgs: dict[str, Any] = {}


def timm_name(name: str) -> str:
    """The timm registry name for a botnet model name (``resnet50`` -> ``botnet_resnet50``)."""
    return name if name.startswith("botnet") else f"botnet_{name}"


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm pretrained config for botnet model ``name`` (no weights: ``url`` is empty).

    The same as ``botnet.create_model(name).pretrained_cfg``: the input size
    is the spec's reference size (the size the position tables are made
    for); any other size of at least the network's stride works too, so
    ``fixed_input_size`` is False.
    """
    from .pretrained_cfg import pretrained_cfg as spec_pretrained_cfg
    from .registry import get_model_spec

    return spec_pretrained_cfg(get_model_spec(name))


def _entrypoint(name: str, registered_as: str) -> Callable[..., Any]:
    from timm.models import build_model_with_cfg

    from .registry import create_model

    def build(**kwargs: Any) -> Any:
        return create_model(name, **kwargs)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> Any:
        if pretrained:
            raise RuntimeError(
                f"{registered_as}: no pretrained BoTNet weights exist; use pretrained=False and start "
                "from ResNet weights with botnet.load_resnet_weights(model, path), or pass "
                "checkpoint_path= with a botnet checkpoint"
            )
        return build_model_with_cfg(
            build, registered_as, pretrained=False, feature_cfg={"out_indices": (0, 1, 2, 3)}, **kwargs
        )

    entrypoint.__name__ = entrypoint.__qualname__ = registered_as
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"botnet model {name!r} (see botnet.list_models()), built by timm."
    return entrypoint


def register_timm_models() -> dict[str, str]:
    """Register every botnet model (not yet registered) in timm's registry.

    Safe to call again, e.g. after :func:`botnet.register_model`: names this
    module registered before are left as they are, names timm owns are
    skipped with a warning.

    Returns:
        :data:`TIMM_NAMES`, botnet name -> timm name.

    Raises:
        ImportError: timm is not installed.
    """
    import timm.models
    from timm.models import generate_default_cfgs

    from .registry import list_models

    module = sys.modules[__name__]
    for name in list_models():
        registered_as = timm_name(name)
        if TIMM_NAMES.get(name) == registered_as:
            continue
        if timm.models.is_model(registered_as):
            warnings.warn(
                f"timm already has a model named {registered_as!r}; botnet's {name!r} is not registered "
                "in timm (use botnet.create_model for it)",
                stacklevel=2,
            )
            continue
        default_cfgs.update(generate_default_cfgs({registered_as: pretrained_cfg(name)}))
        entrypoint = _entrypoint(name, registered_as)
        setattr(module, registered_as, entrypoint)
        timm.models.register_model(entrypoint)
        TIMM_NAMES[name] = registered_as
    return TIMM_NAMES


def _register_quietly() -> None:
    # A timm that is installed but unusable (say, built for another torch)
    # must not break `import botnet` or `import timm`.
    try:
        register_timm_models()
    except Exception as err:  # noqa: BLE001 - an optional integration warns, never fails
        warnings.warn(f"botnet models were not registered in timm: {type(err).__name__}: {err}", stacklevel=3)


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Runs :func:`register_timm_models` right after ``timm`` itself is imported.

    Importing timm costs about as much as importing botnet again (~1.8 s on
    the 2-core test machine), so ``import botnet`` does not import it: this
    finder lets the normal finders locate timm and wraps its loader so that
    our models are registered as soon as timm's ``__init__`` has run, before
    the importer can call ``timm.create_model``.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _remove_import_hook()
            _register_quietly()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


_IMPORT_HOOK = _RegisterAfterTimmImport()


def _remove_import_hook() -> None:
    if _IMPORT_HOOK in sys.meta_path:
        sys.meta_path.remove(_IMPORT_HOOK)


def register_if_timm_installed() -> None:
    """What ``import botnet`` runs: register now if timm is imported, else as soon as it is.

    Never imports timm itself and never fails: without timm nothing happens.
    """
    if sys.modules.get("timm") is not None:
        _register_quietly()
    elif "timm" not in sys.modules and _IMPORT_HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _IMPORT_HOOK)
