"""Forward-hook recorders: capture tensors flowing through named submodules.

A :class:`FeatureRecorder` installs one PyTorch forward (or forward-pre) hook
per recorded module of *one* model. Hooks are inert unless the recorder is
active (``with recorder:``), hold no references outside the recording window,
and are removed by :meth:`FeatureRecorder.remove`. Nothing is monkey-patched.

A :class:`RecordSpec` says what to take from a module:

* ``source='output'`` (default) or ``'input'`` (the first positional input,
  e.g. the input of a block's final ReLU, i.e. its pre-activation output;
  an in-place activation (``nn.ReLU(inplace=True)``, ...) whose input is
  recorded runs out of place during the recording forward instead, so its
  input survives without a copy; inputs of other in-place modules are
  cloned before the module overwrites them);
* ``index``: an element of a tuple/list output (e.g. one FPN level);
* ``call``: modules called several times per forward (a shared ReLU, a head
  conv applied per pyramid level) -- ``'last'`` (default), ``'first'``,
  ``'all'`` (a list of every call) or an integer call index.

With ``stop_when_done=True`` (used for the teacher), the recorder raises
:class:`StopForward` as soon as every spec has seen its expected number of
calls, so a forward pass runs only as deep as the recorded layers need. The
expected counts are calibrated on the first complete forward.
"""
import difflib
import types
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ['RecordSpec', 'FeatureRecorder', 'StopForward', 'get_module']


# Activations whose ``forward`` reads ``self.inplace`` at call time: while a
# recorder holds their input, it sets ``inplace = False`` for that one call
# (restored by a forward hook) instead of cloning the input. The results are
# identical; the copy is saved.
_INPLACE_FLAG_FORWARDS = frozenset(
    cls.forward for cls in (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.ELU,
                            nn.CELU, nn.SELU, nn.SiLU, nn.Mish, nn.Hardswish,
                            nn.Hardsigmoid, nn.Threshold, nn.RReLU))


class StopForward(Exception):
    """Raised by a recorder hook to end a forward pass early."""


def get_module(model: nn.Module, path: str, role: str = 'model') -> nn.Module:
    """``model.get_submodule(path)`` with an error that lists close matches."""
    if path == '':
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(path, names, n=6, cutoff=0.5)
        prefix = path.rsplit('.', 1)[0] if '.' in path else ''
        children = [n for n in names if prefix and n.startswith(prefix + '.')
                    and n.count('.') == prefix.count('.') + 1][:12]
        hint = ''
        if close:
            hint += f' Close matches: {close}.'
        if children:
            hint += f' Children of {prefix!r}: {children}.'
        raise KeyError(
            f'{role} has no submodule {path!r}.{hint} List all names with '
            '`[n for n, _ in model.named_modules()]`.') from None


@dataclass(frozen=True)
class RecordSpec:
    """What to record from one submodule (see module docstring)."""
    path: str
    source: str = 'output'
    index: Optional[int] = None
    call: Union[str, int] = 'last'

    def __post_init__(self):
        if self.source not in ('output', 'input'):
            raise ValueError(
                f"RecordSpec.source must be 'output' or 'input', got "
                f'{self.source!r} (module {self.path!r})')
        if not (self.call in ('last', 'first', 'all')
                or isinstance(self.call, int)):
            raise ValueError(
                "RecordSpec.call must be 'last', 'first', 'all' or an int, "
                f'got {self.call!r} (module {self.path!r})')

    @property
    def key(self) -> str:
        key = f'{self.path}:{self.source}'
        if self.index is not None:
            key += f'[{self.index}]'
        return key


def _select(value: Any, spec: RecordSpec) -> torch.Tensor:
    if spec.index is not None:
        if not isinstance(value, (tuple, list)):
            raise TypeError(
                f'{spec.path!r} returned {type(value).__name__}, not a '
                f'tuple/list, so index={spec.index} cannot be applied')
        value = value[spec.index]
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f'{spec.path!r} ({spec.source}) is a {type(value).__name__}, not '
            'a tensor; record a submodule that returns a tensor or set '
            '`index` to pick one element of a tuple output')
    return value


class FeatureRecorder:
    """Records tensors of several submodules of one model via hooks.

    Args:
        model: the model whose submodules are hooked.
        specs: what to record.
        role: name used in error messages (``'student'``/``'teacher'``).
        stop_when_done: raise :class:`StopForward` once all specs are
            recorded (after a first calibrating forward).
    """

    def __init__(self,
                 model: nn.Module,
                 specs: Sequence[RecordSpec],
                 role: str = 'model',
                 stop_when_done: bool = False):
        self.specs: List[RecordSpec] = list(dict.fromkeys(specs))
        self.role = role
        self.stop_when_done = stop_when_done
        self._active = False
        self._records: Dict[str, List[torch.Tensor]] = {}
        self._calls: Dict[str, int] = {}
        self._expected: Optional[Dict[str, int]] = None
        self._handles = []
        self._out_of_place = set()  # ids of modules made out of place
        #: modules that return zeros instead of running while this recorder
        #: records (:meth:`skip`); ``skip_enabled=False`` runs them all
        self._skipped: List[nn.Module] = []
        self.skip_enabled = True
        by_module: Dict[str, List[RecordSpec]] = {}
        for spec in self.specs:
            by_module.setdefault(spec.path, []).append(spec)
        for path, specs_ in by_module.items():
            module = get_module(model, path, role)
            inplace = bool(getattr(module, 'inplace', False))
            flip = inplace and type(module).forward in _INPLACE_FLAG_FORWARDS
            out_specs = [s for s in specs_ if s.source == 'output']
            in_specs = [s for s in specs_ if s.source == 'input']
            if out_specs:
                self._handles.append(module.register_forward_hook(
                    self._make_hook(out_specs, is_input=False, clone=False)))
            if in_specs:
                self._handles.append(module.register_forward_pre_hook(
                    self._make_hook(in_specs, is_input=True,
                                    clone=inplace and not flip,
                                    out_of_place=flip)))
                if flip:  # runs even if the forward raises
                    self._handles.append(module.register_forward_hook(
                        self._restore_inplace, always_call=True))

    # ------------------------------------------------------------ hooks
    def _make_hook(self, specs: List[RecordSpec], is_input: bool,
                   clone: bool, out_of_place: bool = False):

        def hook(module, args, output=None):
            if not self._active:
                return None
            value = args[0] if is_input else output
            for spec in specs:
                tensor = _select(value, spec)
                if clone:
                    tensor = tensor.clone()
                self._store(spec, tensor)
            if self.stop_when_done and self._done():
                raise StopForward
            if out_of_place and module.inplace:
                module.inplace = False  # keep the recorded input intact
                self._out_of_place.add(id(module))
            return None

        if is_input:
            return lambda module, args: hook(module, args)
        return hook

    def _restore_inplace(self, module, args, output) -> None:
        if id(module) in self._out_of_place:
            self._out_of_place.discard(id(module))
            module.inplace = True

    def _store(self, spec: RecordSpec, tensor: torch.Tensor) -> None:
        key = spec.key
        n = self._calls.get(key, 0)
        self._calls[key] = n + 1
        if spec.call == 'all':
            self._records.setdefault(key, []).append(tensor)
        elif spec.call == 'first':
            if n == 0:
                self._records[key] = [tensor]
        elif spec.call == 'last':
            self._records[key] = [tensor]
        elif n == spec.call:
            self._records[key] = [tensor]

    def _done(self) -> bool:
        if self._expected is None:
            return False
        return all(
            self._calls.get(k, 0) >= n for k, n in self._expected.items())

    # ------------------------------------------------------------ API
    def __enter__(self) -> 'FeatureRecorder':
        self._records = {}
        self._calls = {}
        self._active = True
        for module in self._skipped:
            module._mmlckd_skip_now = self.skip_enabled
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._active = False
        for module in self._skipped:
            module._mmlckd_skip_now = False
        if exc_type is StopForward:
            return True  # swallow: the forward was cut on purpose
        if exc_type is None and not self.calibrated:
            self.calibrate()  # the first complete forward
        return False

    @property
    def calibrated(self) -> bool:
        """Whether the expected call counts of ``stop_when_done`` are set."""
        return self._expected is not None

    def calibrate(self) -> None:
        """Take the call counts of the last recording as the number of calls
        each spec waits for before ``stop_when_done`` ends a forward."""
        self._expected = dict(self._calls)

    def recorded(self, strict: bool = True
                 ) -> Dict[str, Union[torch.Tensor, List[torch.Tensor]]]:
        """``spec.key -> tensor`` (a list for ``call='all'``) of every spec
        of the last recording. A spec whose module did not run raises the
        error of :meth:`get`, or is left out with ``strict=False``."""
        return {spec.key: self.get(spec) for spec in self.specs
                if strict or spec.key in self._records}

    def get(self, spec: RecordSpec) -> Union[torch.Tensor, List[torch.Tensor]]:
        """The recorded tensor (a list for ``call='all'``)."""
        if spec.key not in self._records:
            raise RuntimeError(
                f'{self.role}: nothing was recorded for {spec.path!r} '
                f'({spec.source}, call={spec.call!r}); the module did not run '
                'in this forward pass. Record a module on the forward path '
                "(e.g. 'backbone.layer1' or 'neck').")
        values = self._records[spec.key]
        return values if spec.call == 'all' else values[0]

    def clear(self) -> None:
        """Drop references to recorded tensors (free memory)."""
        self._records = {}
        self._calls = {}

    def skip(self, modules: Sequence[nn.Module]) -> None:
        """While this recorder records (and :attr:`skip_enabled`), each of
        ``modules`` returns zeros shaped like its first tensor argument
        instead of running; outside a recording it runs as usual (the
        teacher's ``predict`` is untouched). For the modules no recorded
        tensor depends on (:func:`~mmlckd.models.probe.unread_modules`),
        e.g. a dense head's box branch when only its classifier is read.
        The instance's ``forward`` becomes a method of this module
        (deep copies and pickles follow the copy); :meth:`unskip` restores
        it."""
        for module in modules:
            if 'forward' in module.__dict__:
                continue  # already wrapped by someone: leave it
            module.forward = types.MethodType(_skippable_forward, module)
            module._mmlckd_skip_now = False
            self._skipped.append(module)

    def unskip(self) -> None:
        """Undo :meth:`skip`: every module runs again."""
        for module in self._skipped:
            del module.forward
            del module._mmlckd_skip_now
        self._skipped = []

    @property
    def skipped(self) -> List[nn.Module]:
        return list(self._skipped)

    def remove(self) -> None:
        """Remove every hook (and every :meth:`skip`)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.unskip()
        self.clear()


def _skippable_forward(self: nn.Module, *args, **kwargs):
    """The ``forward`` of a module given to :meth:`FeatureRecorder.skip`."""
    if self.__dict__.get('_mmlckd_skip_now', False):
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, torch.Tensor):
                return torch.zeros_like(value)
        raise TypeError(f'{type(self).__name__} was skipped but got no '
                        'tensor argument to shape its zeros')
    return type(self).forward(self, *args, **kwargs)
