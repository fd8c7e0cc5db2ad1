"""wmbook.pixels: frames as observations, the CartPole crop, action repeat, headless rendering."""

import os
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmbook.pixels import ActionRepeat, PixelObservation, cartpole_crop, make_pixel_env

CART = np.array([0, 0, 0])  # CartPole draws the cart black ...
POLE = np.array([202, 152, 101])  # ... and the pole in this brown


def _frame_of(env: PixelObservation, state) -> np.ndarray:
    """The observation of a reset CartPole put into ``state``."""
    env.unwrapped.state = np.asarray(state, dtype=np.float64)
    return env.frame()


def _cart_columns(frame_hwc: np.ndarray) -> np.ndarray:
    """Columns of a (H, W, 3) frame that hold a mostly black (cart) pixel."""
    return np.flatnonzero((frame_hwc.max(axis=2) < 100).any(axis=0))


def _pole_share(frame_hwc: np.ndarray) -> np.ndarray:
    """How much of each pixel is pole colour, 0 (white) to 1, for a (H, W, 3) frame."""
    ink = 255.0 - frame_hwc.astype(np.float64)
    return np.clip(ink @ (255.0 - POLE) / np.sum((255.0 - POLE) ** 2), 0, None)


def _pole_column(frame_hwc: np.ndarray) -> float:
    """Mean column of the pole colour in a (H, W, 3) frame."""
    share = _pole_share(frame_hwc).sum(axis=0)
    return float((share * np.arange(share.size)).sum() / share.sum())


@pytest.fixture
def env():
    env = make_pixel_env(layout="hwc")
    env.reset(seed=0)
    yield env
    env.close()


# -- observations -----------------------------------------------------------------------


@pytest.mark.parametrize("layout, shape", [("chw", (3, 64, 64)), ("hwc", (64, 64, 3))])
def test_observation_shape_dtype_and_space(layout, shape):
    env = make_pixel_env(layout=layout)
    assert env.observation_space == gym.spaces.Box(0, 255, shape, np.uint8)
    obs, _ = env.reset(seed=0)
    frames = [obs] + [env.step(i % 2)[0] for i in range(5)]
    for frame in frames:
        assert frame.shape == shape and frame.dtype == np.uint8 and frame.flags.c_contiguous
        assert env.observation_space.contains(frame)
    assert frames[0] is not frames[1] and not np.shares_memory(frames[0], frames[1])


def test_channel_first_and_last_hold_the_same_pixels():
    chw, hwc = make_pixel_env(layout="chw"), make_pixel_env(layout="hwc")
    a, b = chw.reset(seed=4)[0], hwc.reset(seed=4)[0]
    np.testing.assert_array_equal(a, b.transpose(2, 0, 1))
    np.testing.assert_array_equal(chw.step(1)[0], hwc.step(1)[0].transpose(2, 0, 1))


def test_size_may_be_a_height_width_pair():
    env = make_pixel_env(size=(48, 96))
    assert env.reset(seed=0)[0].shape == (3, 48, 96)
    assert make_pixel_env(size=np.int64(32)).observation_space.shape == (3, 32, 32)


def test_downscaling_is_an_area_mean_of_the_cropped_frame(env):
    # a 128 x 576 crop into 64 x 64: every output pixel is the mean of a 2 x 9 block
    boxed = PixelObservation(env.env, size=64, layout="hwc", crop=(170, 298, 12, 588))
    _frame_of(env, [0.3, 0.0, 0.1, 0.0])
    full = env.render().astype(np.float64)
    expected = full[170:298, 12:588].reshape(64, 2, 64, 9, 3).mean(axis=(1, 3))
    got = boxed.frame().astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0  # Pillow rounds to integers
    assert np.abs(got - expected).mean() < 0.5
    assert (got < 250).sum() > 20  # the comparison covered the cart and pole, not just white


def test_auto_crop_is_cartpoles_band_and_the_whole_frame_elsewhere(env):
    assert env.crop == cartpole_crop(env) == (168, 320, 0, 600)
    assert make_pixel_env(crop=None).crop is None
    pendulum = make_pixel_env("Pendulum-v1", size=32)
    assert pendulum.crop is None
    obs, info = pendulum.reset(seed=0)
    assert obs.shape == (3, 32, 32) and info["state"].shape == (3,)
    assert len(np.unique(obs)) > 2  # something was drawn


# -- frames follow the state ------------------------------------------------------------


def test_identical_states_give_identical_frames():
    a, b = make_pixel_env(), make_pixel_env()
    a.reset(seed=1)
    b.reset(seed=2)
    state = [0.7, 0.3, -0.05, 0.2]
    np.testing.assert_array_equal(_frame_of(a, state), _frame_of(b, state))


def test_frames_change_where_the_pole_moves(env):
    upright = _frame_of(env, [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(upright, _frame_of(env, [0.0, 1.0, 0.0, -1.0]))  # velocities are invisible
    for theta, side in [(0.15, 1), (-0.15, -1)]:
        leaning = _frame_of(env, [0.0, 0.0, theta, 0.0])
        changed_rows = np.flatnonzero((leaning != upright).any(axis=(1, 2)))
        assert changed_rows.size > 20
        assert changed_rows.max() <= 55  # nothing changed below the pole's foot: the cart did not move
        # positive theta leans the pole to the right: its colour moves to the right near the tip
        tip = slice(changed_rows.min(), changed_rows.min() + 10)
        assert side * (_pole_column(leaning[tip]) - _pole_column(upright[tip])) > 1.0


@pytest.mark.parametrize("x", [-2.0, -0.5, 0.0, 1.2, 2.0])
def test_the_cart_is_drawn_where_the_state_puts_it(env, x):
    columns = _cart_columns(_frame_of(env, [x, 0.0, 0.0, 0.0]))
    expected = (x * 125 + 300) / 600 * 64  # 125 pixels per metre, track centred in 600 columns
    assert abs(columns.mean() + 0.5 - expected) < 0.75
    assert 4 <= columns.size <= 7  # a 50-pixel cart, 9.375 columns per pixel


@pytest.mark.parametrize("x, edge", [(-2.4, 0), (-2.3, 0), (2.3, 63), (2.4, 63)])
def test_the_crop_keeps_the_cart_in_view_at_both_ends_of_the_track(env, x, edge):
    inward = -np.sign(x)
    for theta in (-0.21, 0.0, 0.21):
        frame = _frame_of(env, [x, 0.0, theta, 0.0])
        columns = _cart_columns(frame)
        assert columns.size >= 2 and edge in columns
        if theta * inward >= 0:  # a pole leaning out of the track's end leaves the picture
            assert (_pole_share(frame[:40]) > 0.3).any()


def test_the_crop_cuts_nothing_away_from_any_live_state(env):
    rng = np.random.default_rng(0)
    top, bottom, _, _ = env.crop
    limits = np.array([2.4, 0.0, 0.2095, 0.0])  # CartPole's termination bounds
    lying = [[x, 0.0, theta, 0.0] for x in (-1.0, 1.0) for theta in (-np.pi / 2, np.pi / 2)]
    for state in np.concatenate([rng.uniform(-1, 1, (40, 4)) * limits, lying]):
        env.unwrapped.state = state
        full = env.render()
        assert np.all(full[:top] == 255) and np.all(full[bottom:] == 255), state


def test_info_state_is_the_underlying_state():
    pixels, plain = make_pixel_env(), gym.make("CartPole-v1")
    obs, info = pixels.reset(seed=5)
    expected, _ = plain.reset(seed=5)
    for t in range(40):
        assert info["state"].dtype == np.float32
        np.testing.assert_array_equal(info["state"], expected)
        np.testing.assert_array_equal(info["state"], np.float32(pixels.unwrapped.state))
        action = t % 3 == 0
        obs, reward, terminated, truncated, info = pixels.step(int(action))
        expected, plain_reward, *ends, _ = plain.step(int(action))
        assert (reward, terminated, truncated) == (plain_reward, *ends)
        if terminated:
            break


def test_same_seed_same_frames_and_another_seed_other_frames():
    def episode(seed):
        env = make_pixel_env(seed=seed)
        frames = [env.reset(seed=seed)[0]]
        for _ in range(60):  # a few random episodes, each new one reset from the seeded generator
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            frames.append(env.reset()[0] if terminated or truncated else obs)
        return np.stack(frames)

    first = episode(3)
    np.testing.assert_array_equal(first, episode(3))
    assert not np.array_equal(first, episode(4))


# -- Gymnasium's checker and spec ------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"layout": "hwc"}, {"action_repeat": 2, "size": (32, 48)}])
def test_check_env_passes_with_only_gymnasiums_notice_about_wrappers(kwargs):
    env = make_pixel_env(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    messages = [str(w.message) for w in caught]
    # check_env names every wrapped environment: the checker itself recommends env.unwrapped
    assert len(messages) == 1 and "different from the unwrapped version" in messages[0], messages


def test_the_spec_rebuilds_the_same_pixel_env():
    env = make_pixel_env(size=(32, 48), layout="hwc", action_repeat=2)
    rebuilt = gym.make(env.spec)
    assert isinstance(rebuilt, PixelObservation) and isinstance(rebuilt.env, ActionRepeat)
    assert rebuilt.observation_space == env.observation_space
    np.testing.assert_array_equal(rebuilt.reset(seed=2)[0], env.reset(seed=2)[0])
    np.testing.assert_array_equal(rebuilt.step(0)[0], env.step(0)[0])


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("render_mode", [None, "human"])
def test_an_env_without_rgb_array_rendering_is_refused(render_mode):
    with pytest.raises(ValueError, match=f"render_mode='rgb_array'.*got render_mode={render_mode!r}"):
        PixelObservation(gym.make("CartPole-v1", render_mode=render_mode))
    with pytest.raises(ValueError, match=f"render_mode='rgb_array'.*got {render_mode!r}"):
        make_pixel_env(render_mode=render_mode)


@pytest.mark.parametrize("size", [0, -3, 2.5, "64", True, None, (64,), (64, 0), (64, 64, 3)])
def test_a_size_that_is_not_a_positive_integer_is_refused(size):
    with pytest.raises(ValueError, match="size must be a positive integer"):
        make_pixel_env(size=size)


@pytest.mark.parametrize("layout", ["cwh", "CHW", "channels_last", None])
def test_an_unknown_channel_order_is_refused(layout):
    with pytest.raises(ValueError, match="layout must be 'chw'.*or 'hwc'"):
        make_pixel_env(layout=layout)


@pytest.mark.parametrize("crop", ["whole", (10, 5, 0, 600), (0, 10, 0), (-1, 10, 0, 10), (0, 10.5, 0, 10), 7])
def test_a_malformed_crop_is_refused(crop):
    with pytest.raises(ValueError, match="crop must be"):
        make_pixel_env(crop=crop)


def test_a_crop_beyond_the_frame_is_refused_when_the_frame_arrives():
    env = make_pixel_env(crop=(0, 401, 0, 600))
    with pytest.raises(ValueError, match=r"reaches outside the rendered frame of 400 x 600"):
        env.reset(seed=0)


def test_a_render_that_is_not_an_rgb_image_is_refused():
    class GreyRender(gym.Wrapper):
        def render(self):
            return self.env.render()[..., 0]

    env = PixelObservation(GreyRender(gym.make("CartPole-v1", render_mode="rgb_array")))
    with pytest.raises(ValueError, match=r"uint8 \(height, width, 3\).*uint8 \(400, 600\)"):
        env.reset(seed=0)


def test_other_errors_name_the_problem():
    with pytest.raises(ValueError, match="NoSuchEnv"):
        make_pixel_env("NoSuchEnv-v0")
    with pytest.raises(TypeError, match="CartPole"):
        cartpole_crop(gym.make("Pendulum-v1"))
    for repeat in (0, 1.5, -2):
        with pytest.raises(ValueError, match="repeat must be a positive integer"):
            make_pixel_env(action_repeat=repeat)


# -- action repeat ----------------------------------------------------------------------


def test_action_repeat_sums_rewards_and_matches_repeated_single_steps():
    repeat = 3
    pixels, plain = make_pixel_env(action_repeat=repeat), gym.make("CartPole-v1")
    _, info = pixels.reset(seed=7)
    plain.reset(seed=7)
    for t in range(200):
        # balance for 30 steps, then push right until the pole falls
        x, x_dot, theta, theta_dot = info["state"]
        action = int(theta + 0.5 * theta_dot > 0) if t < 30 else 1
        _, reward, terminated, truncated, info = pixels.step(action)
        total, taken = 0.0, 0
        for _ in range(repeat):
            state, r, plain_terminated, plain_truncated, _ = plain.step(action)
            total, taken = total + r, taken + 1
            if plain_terminated or plain_truncated:
                break
        np.testing.assert_array_equal(info["state"], state)
        assert (reward, info["repeats"], terminated, truncated) == (total, taken, plain_terminated, plain_truncated)
        if terminated:
            break
    assert terminated and t > 30


def test_action_repeat_stops_at_a_fall_inside_the_repeat():
    env = make_pixel_env(action_repeat=4)
    env.reset(seed=0)
    # leaning close to the limit and falling: the first inner step ends the episode
    env.unwrapped.state = np.array([0.0, 0.0, 0.205, 2.0])
    _, reward, terminated, truncated, info = env.step(1)
    assert terminated and not truncated and info["repeats"] == 1 and reward == 1.0


def test_action_repeat_honours_a_time_limit():
    env = make_pixel_env(action_repeat=4, max_episode_steps=10)
    env.reset(seed=0)
    outcomes = [env.step(i % 2)[1:] for i in range(3)]
    assert [o[0] for o in outcomes] == [4.0, 4.0, 2.0]
    assert [o[2] for o in outcomes] == [False, False, True]
    assert [o[3]["repeats"] for o in outcomes] == [4, 4, 2]


# -- headless rendering -----------------------------------------------------------------

_RENDER_ONE_FRAME = """
import os
from wmbook.pixels import make_pixel_env
import pygame  # after wmbook.pixels, which silences its greeting
env = make_pixel_env()
obs, _ = env.reset(seed=0)
print(os.environ["SDL_VIDEODRIVER"], pygame.display.get_driver(), obs.shape, int(obs.min()))
"""


def _render_in_a_fresh_process(**env_vars) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SDL_VIDEODRIVER", "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY",
                        "PYGAME_HIDE_SUPPORT_PROMPT")}
    # -W ignore: Python warnings from the installed pygame/setuptools pair (pkg_resources
    # deprecation) are not what this checks; SDL writes its complaints straight to stderr
    return subprocess.run([sys.executable, "-W", "ignore", "-c", _RENDER_ONE_FRAME], env={**env, **env_vars},
                          capture_output=True, text=True, timeout=60)


def test_rendering_is_headless_and_silent_without_a_display():
    done = _render_in_a_fresh_process()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["dummy", "dummy", "(3,", "64,", "64)", "0"]  # the black cart is drawn
    assert done.stderr == ""  # no XDG_RUNTIME_DIR complaint from SDL
    assert "pygame" not in done.stdout  # no greeting either


def test_a_video_driver_set_by_the_user_is_kept():
    done = _render_in_a_fresh_process(SDL_VIDEODRIVER="offscreen")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["offscreen", "offscreen"]


# -- the fovea view -----------------------------------------------------------------------------

def _fovea_frame(state, size=64):
    env = make_pixel_env(size=size, layout="hwc", fovea=True)
    env.reset(seed=0)
    return _frame_of(env, state)


def test_fovea_frames_keep_their_shape():
    env = make_pixel_env(size=(32, 48), fovea=True)
    frame, _ = env.reset(seed=0)
    assert frame.shape == env.observation_space.shape == (3, 32, 48) and frame.dtype == np.uint8


def test_the_fovea_follows_the_cart_and_the_track_view_shows_where_it_is():
    # 0.8 m is exactly 100 source pixels: the window around the cart must not change at all
    here, there = _fovea_frame([0.0, 0, 0.05, 0]), _fovea_frame([0.8, 0, 0.05, 0])
    assert np.array_equal(here[:32], there[:32])
    assert not np.array_equal(here[32:], there[32:])
    assert _cart_columns(there[32:]).mean() > _cart_columns(here[32:]).mean() + 5


@pytest.mark.parametrize("x", [-1.5, 0.0, 1.5])
def test_the_fovea_shows_the_lean_far_larger_than_the_whole_track_view(x):
    def tip_shift(frames):
        return _pole_column(frames[1][:8]) - _pole_column(frames[0][:8])

    fovea = [_fovea_frame([x, 0, theta, 0]) for theta in (-0.1, 0.1)]
    plain = make_pixel_env(layout="hwc")
    plain.reset(seed=0)
    track = [_frame_of(plain, [x, 0, theta, 0]) for theta in (-0.1, 0.1)]
    assert tip_shift(fovea) > 3 * tip_shift(track) > 0


def test_the_cart_is_found_in_the_pixels_at_the_end_of_the_track():
    frame = _fovea_frame([2.35, 0, 0.0, 0])
    assert _pole_share(frame[:32]).sum() > 10  # the pole is still in the window


def test_the_fovea_is_cartpoles_only():
    with pytest.raises(ValueError, match="not CartPole"):
        make_pixel_env("Pendulum-v1", fovea=True)


# -- reading CartPole's surface -------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"fovea": True}, {"crop": None}, {"crop": (100, 300, 50, 550)},
                                    {"fovea": True, "crop": (150, 260, 0, 600)}])  # the cart below this crop
def test_frames_read_from_cartpoles_surface_equal_those_of_render(kwargs):
    fast, reference = make_pixel_env(**kwargs), make_pixel_env(read_surface=False, **kwargs)
    fast.reset(seed=0)
    reference.reset(seed=0)
    states = np.random.default_rng(0).uniform([-2.6, -3, -0.3, -3], [2.6, 3, 0.3, 3], size=(60, 4))
    for state in states:
        np.testing.assert_array_equal(_frame_of(fast, state), _frame_of(reference, state))
    assert fast._reads_surface and not reference._reads_surface  # each kept its path throughout


def test_a_cartpole_that_renders_otherwise_is_read_through_render():
    class Inverted(gym.Wrapper):  # a render that is not what CartPole draws on its surface
        def render(self):
            return 255 - self.env.render()

    env = PixelObservation(Inverted(gym.make("CartPole-v1", render_mode="rgb_array")), layout="hwc")
    first, _ = env.reset(seed=0)
    second = env.step(1)[0]
    assert not env._reads_surface
    assert first.mean() < 40 and second.mean() < 40  # the inverted frames (mostly black), twice


def test_the_frame_benchmark_checks_both_paths_and_reports_the_speed_up(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pixel_fps.py"
    spec = importlib.util.spec_from_file_location("pixel_fps", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.same_observations(32, fovea=True, seed=0, steps=40)
    assert script.main(["--steps", "20", "--warmup", "0", "--size", "32"]) == 0
    table = capsys.readouterr().out
    for loop in ("pixels 32x32, surface", "pixels 32x32, fovea, render()", "pixels 32x32, fovea, surface"):
        assert f"| {loop}" in table
    assert table.count("x |") == 2  # a speed-up on each surface row
