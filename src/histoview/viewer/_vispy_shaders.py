"""vispy's text work on shader programs done once per source, not once per rebuild.

vispy rebuilds a visual's shader program whenever the visual's transform chain changes, and
napari changes it whenever it moves a layer into another view: the compare view's switch to
side by side and back rebuilds every panel layer's programs. The rebuilt sources repeat:
one switch with ten explanations rebuilt 382 shaders with 22 distinct sources. Three steps of
each rebuild are pure functions of the source text and cost the main thread Python time on any
GPU (~25 % of such a switch on a 2-core CPU, profiled):

* ``vispy.gloo.glir._convert_desktop_shader`` - the line-by-line rewrite for desktop OpenGL;
* ``vispy.gloo.program.Program._parse_variables_from_code`` - regular expressions that list
  the program's uniforms, attributes and varyings;
* ``GlirProgram._get_active_attributes_and_uniforms`` - after linking, one OpenGL query per
  uniform through PyOpenGL; the answer depends only on the linked shaders' sources (and
  the driver, which is one per process).

The shader functions vispy builds every visual, transform and viewbox from parse their GLSL
snippets the same way each time (``vispy.visuals.shaders``: ``Function._clean_code``, the
indentation strip run on every ``Function``, and the ``parsing`` module's signature,
template-variable and program-variable regular expressions); those results are kept by
snippet too (~15-20 % of inserting a layer or making napari's grid, profiled).

:func:`install` keeps each result by its source (bounded: the oldest half is dropped past
:data:`MAX_SOURCES`) and hands out copies. Programs are still compiled and linked as before;
nothing about their state is shared. It patches only a vispy that has all of these under
vispy 0.17's names; on any other it changes nothing.
"""

from __future__ import annotations

from collections import OrderedDict

from ._patching import Patches

#: most sources kept per cache
MAX_SOURCES = 512

_PATCHES = Patches()


class _Cache(OrderedDict):
    def keep(self, key, value):
        self[key] = value
        if len(self) > MAX_SOURCES:
            for _ in range(len(self) // 2):
                self.popitem(last=False)
        return value


_CONVERTED = _Cache()
_VARIABLES = _Cache()
_ACTIVE = _Cache()
_SNIPPETS: dict[str, _Cache] = {}  # per vispy function below: its results by snippet

#: ``vispy.visuals.shaders.parsing`` functions kept by snippet, and how a result is copied
#: (callers may change the lists and dicts they get)
_PARSING = {
    "parse_function_signature": lambda r: (r[0], list(r[1]), r[2]),
    "find_template_variables": list,
    "find_program_variables": dict,
}


def _modules():
    try:
        from vispy.gloo import glir, program
    except ImportError:
        return None
    parser_program = getattr(glir, "GlirProgram", None)
    if not (
        callable(getattr(glir, "_convert_desktop_shader", None))
        and hasattr(program.Program, "_parse_variables_from_code")
        and parser_program is not None
        and hasattr(parser_program, "_get_active_attributes_and_uniforms")
        and hasattr(parser_program, "link_program")
        and hasattr(getattr(glir, "GlirShader", None), "set_data")
    ):
        return None
    try:
        from vispy.visuals.shaders import function, parsing
    except ImportError:
        return None
    if not (
        callable(getattr(function.Function, "_clean_code", None))
        and getattr(function, "parsing", None) is parsing
        and all(callable(getattr(parsing, name, None)) for name in _PARSING)
    ):
        return None
    return glir, program, function, parsing


def _clean_code(self, code):
    cache = _SNIPPETS["clean"]
    found = cache.get(code)
    if found is None:
        found = cache.keep(code, _PATCHES.original("clean")(self, code))
    return found  # a string


def _kept(name: str, copy, original):
    cache = _SNIPPETS[name]

    def kept(code):
        found = cache.get(code)
        if found is None:
            found = cache.keep(code, original(code))
        return copy(found)

    kept.__name__ = kept.__qualname__ = name
    kept.__doc__ = original.__doc__
    return kept


def _convert_desktop_shader(shader):
    found = _CONVERTED.get(shader)
    if found is None:
        found = _CONVERTED.keep(shader, _PATCHES.original("convert")(shader))
    return found  # a string: nothing to copy


def _parse_variables_from_code(self, update_variables=True):
    code = "\n\n".join(sh.code for sh in self._shaders)
    found = _VARIABLES.get(code)
    if found is None:
        _PATCHES.original("parse")(self, update_variables=False)
        _VARIABLES.keep(code, dict(self._code_variables))
    else:
        self._code_variables = dict(found)
    if update_variables:
        self._process_pending_variables()


def _shader_set_data(self, offset, code):
    self._histoview_code = code  # the source, for the program that links it
    _PATCHES.original("shader_data")(self, offset, code)


def _link_program(self):
    codes = tuple(getattr(s, "_histoview_code", None) for s in self._attached_shaders)
    self._histoview_sources = codes if codes and None not in codes else None
    try:
        _PATCHES.original("link")(self)
    finally:
        self._histoview_sources = None


def _active(self):
    key = getattr(self, "_histoview_sources", None)
    if key is None:  # linked some other way: ask OpenGL
        return _PATCHES.original("active")(self)
    found = _ACTIVE.get(key)
    if found is None:
        found = _ACTIVE.keep(key, frozenset(_PATCHES.original("active")(self)))
    return set(found)  # vispy removes names from it as they are set


def install() -> bool:
    """Keep vispy's per-source shader results (idempotent). Returns whether it is
    installed (False on a vispy this module does not know)."""
    modules = _modules()
    if modules is None:
        return False
    glir, program, function, parsing = modules
    if not _PATCHES:
        swap = _PATCHES.swap
        swap(glir, "_convert_desktop_shader", _convert_desktop_shader, key="convert")
        swap(program.Program, "_parse_variables_from_code", _parse_variables_from_code, "parse")
        swap(glir.GlirShader, "set_data", _shader_set_data, key="shader_data")
        swap(glir.GlirProgram, "link_program", _link_program, key="link")
        swap(glir.GlirProgram, "_get_active_attributes_and_uniforms", _active, key="active")
        _SNIPPETS["clean"] = _Cache()
        swap(function.Function, "_clean_code", _clean_code, key="clean")
        for name, copy in _PARSING.items():
            _SNIPPETS[name] = _Cache()
            swap(parsing, name, _kept(name, copy, getattr(parsing, name)))
    return True


def uninstall() -> None:
    """Restore vispy's own functions and forget what was kept (tests compare both)."""
    if not _PATCHES:
        return
    _PATCHES.restore()
    for cache in (_CONVERTED, _VARIABLES, _ACTIVE):
        cache.clear()
    _SNIPPETS.clear()
