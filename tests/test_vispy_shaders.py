"""vispy's per-source shader work is done once per source and gives vispy's own answers
(viewer._vispy_shaders)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vispy")

from histoview.viewer import _vispy_shaders  # noqa: E402

VERT = """
#version 120
uniform mat4 u_matrix;  // a comment with uniform float u_not_a_variable;
uniform vec2 u_pairs[3];
attribute vec2 a_position;
varying float v_depth;
const float SCALE = 2.0;
void main() {
    v_depth = a_position.x * SCALE + u_pairs[1].y;
    gl_Position = u_matrix * vec4(a_position, 0.0, 1.0);
}
"""
FRAG = """
precision highp float;
uniform sampler2D u_texture;
varying float v_depth;
void main() { gl_FragColor = texture2D(u_texture, vec2(v_depth)); }
"""


def _parsed():
    from vispy import gloo

    program = gloo.Program(VERT, FRAG)
    return sorted(program.variables)


def test_parsed_variables_and_converted_sources_match_vispys_own():
    from vispy.gloo import glir

    _vispy_shaders.uninstall()
    own_variables = _parsed()
    own_converted = glir._convert_desktop_shader(FRAG)
    assert ("uniform_array", "vec2", "u_pairs") in own_variables
    assert not any(name == "u_not_a_variable" for *_, name in own_variables)
    try:
        assert _vispy_shaders.install()
        assert _parsed() == own_variables  # kept
        assert _parsed() == own_variables  # handed out again, unchanged by the first user
        assert len(_vispy_shaders._VARIABLES) == 1
        assert glir._convert_desktop_shader(FRAG) == own_converted
        assert glir._convert_desktop_shader(FRAG) == own_converted
        assert len(_vispy_shaders._CONVERTED) == 1
    finally:
        _vispy_shaders.install()


SNIPPET = """
    vec4 scaled(vec4 pos, float scale) {
        return vec4(pos.xy * $factor * scale, pos.zw) + $offset;
    }
"""


def _snippet_answers():
    from vispy.visuals.shaders import parsing
    from vispy.visuals.shaders.function import Function

    fn = Function(SNIPPET)
    return (
        fn.code,
        parsing.parse_function_signature(fn.code),
        parsing.find_template_variables(fn.code),
        parsing.find_program_variables("uniform vec2 u_a, u_b;\nattribute float a_x;"),
        sorted(fn.template_vars),
    )


def test_shader_snippets_parse_as_vispy_parses_them_and_callers_get_their_own_copies():
    from vispy.visuals.shaders import parsing

    _vispy_shaders.uninstall()
    own = _snippet_answers()
    assert own[0].startswith("\nvec4 scaled")  # indentation stripped
    assert own[1] == ("scaled", [("vec4", "pos"), ("float", "scale")], "vec4")
    assert own[4] == ["factor", "offset"]
    try:
        assert _vispy_shaders.install()
        assert _snippet_answers() == own
        first = parsing.parse_function_signature(own[0])
        first[1].append(("int", "changed_by_a_caller"))
        parsing.find_template_variables(own[0]).append("$changed")
        parsing.find_program_variables("uniform vec2 u_a, u_b;\nattribute float a_x;")["x"] = 1
        assert _snippet_answers() == own  # kept, and unchanged by what callers did with theirs
        assert len(_vispy_shaders._SNIPPETS["clean"]) >= 1
    finally:
        _vispy_shaders.install()


def test_the_caches_stay_bounded():
    from vispy.gloo import glir

    assert _vispy_shaders.install()
    for i in range(_vispy_shaders.MAX_SOURCES + 10):
        glir._convert_desktop_shader(f"void main() {{ float x = {i}.0; }}")
    assert len(_vispy_shaders._CONVERTED) <= _vispy_shaders.MAX_SOURCES


@pytest.mark.gui
def test_switching_views_draws_what_vispy_draws_and_reuses_each_source(make_napari_viewer, qtbot):
    """napari's grid on and off rebuilds every layer's programs; with the caches the
    canvas shows the same pixels as without, and a second round trip adds no source."""
    rng = np.random.default_rng(3)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(rng.random((48, 64)), name="tissue", colormap="gray")
    viewer.add_image(rng.random((12, 16)), name="map", colormap="magma", opacity=0.6, scale=(4, 4))
    viewer.add_points(rng.random((20, 2)) * 48, name="nuclei", size=3, face_color="cyan")

    def round_trip():
        shots = []
        for enabled in (True, False):
            viewer.grid.enabled = enabled
            viewer.reset_view()
            qtbot.wait(20)
            shots.append(viewer.screenshot(canvas_only=True, flash=False))
        return shots

    _vispy_shaders.uninstall()
    round_trip()  # settle the first draws
    own = round_trip()
    try:
        assert _vispy_shaders.install()
        cached = round_trip()
        sizes = [len(c) for c in (_vispy_shaders._CONVERTED, _vispy_shaders._VARIABLES)]
        sizes.append(len(_vispy_shaders._ACTIVE))
        assert min(sizes) > 0  # the rebuilds went through the caches
        again = round_trip()
        assert [
            len(c)
            for c in (_vispy_shaders._CONVERTED, _vispy_shaders._VARIABLES, _vispy_shaders._ACTIVE)
        ] == sizes  # every source seen before
        for mine, theirs in zip(cached + again, own + own, strict=True):
            assert mine.shape == theirs.shape
            assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1
    finally:
        _vispy_shaders.install()
