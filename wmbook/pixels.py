"""Environments seen through their pixels: CartPole as 64x64 frames for V+M+C and Dreamer.

:class:`PixelObservation` replaces an environment's observation by its rendered frame, cropped
and downscaled with an area (box) filter: each output pixel is the mean of the source pixels it
covers, so a thin object fades instead of vanishing or aliasing. Observations are uint8
``(3, H, W)`` (channels first, as torch convolutions want them; ``layout="hwc"`` gives
``(H, W, 3)``). The observation the environment had before, for CartPole the state
``(x, x_dot, theta, theta_dot)``, stays in ``info["state"]``, so that a chapter can set a
model's latent beside the true state. :class:`ActionRepeat` repeats each action a number of
times (frame skip); :func:`make_pixel_env` builds both from an environment id.

The crop. CartPole's 600x400 frame is mostly white: the cart and the pole live in a band of
rows between the upright pole's tip and the cart's bottom edge. The band is kept whole
horizontally, because the cart travels the full width of the frame (``|x| <= 2.4`` maps to
columns 0 to 600) and its position decides when an episode ends. Cropping to the band
(:func:`cartpole_crop`: rows 168 to 320 of 400) before downscaling to 64x64 stretches the
picture vertically (2.4 source rows per output row, against 9.4 columns per output column):
the pole shows over 48 output rows above the cart instead of 20 for the whole frame, and the
cart is 5.3 x 12.6 pixels instead of 5.3 x 4.8. The pole's thickness is set by the horizontal
factor, which no crop that keeps the whole track can change. Measured on 64x64 frames of an
upright pole at 41 cart positions: 1.17 pixels' worth of pole colour per row (10 source pixels
plus anti-aliased edges, over 9.375), always spread over two columns, the darker of which
carries 60% to 100% of the pole's full contrast depending on where the cart stands on the
pixel grid. So the pole is thin but never lost, and its lean moves the tip by up to 2.7
pixels at the 12 degrees where an episode ends.

The fovea (``fovea=True``, CartPole only). At 9.4 source columns per output column no VAE of
the size a CPU affords learns the pole's lean from the band alone (measured in Chapter 4: a
linear read-out of the angle from its code explained none of the variance). The fovea view
spends half of the output rows on a window centred on the cart instead: the top ``H // 2``
rows show the band's rows above the cart, ``2 * FOVEA_HALF_WIDTH`` source columns wide around
the cart's centre (2 source columns per output column at 64 wide, so the pole is 5 pixels wide
and its lean at 12 degrees moves the tip by 13); the bottom ``H - H // 2`` rows show the whole
band as before, which keeps the cart's position on the track. The cart's centre is found in the
rendered frame itself, as the middle of the dark columns in the rows of the cart's body above
the track line (:func:`cartpole_cart_column`), never from the state, and the same rule is
applied to every frame; beyond the frame's edges the window is white.

Headless rendering. CartPole draws with pygame, which needs a video driver even to draw into
an off-screen surface. Importing this module sets ``SDL_VIDEODRIVER=dummy`` unless the
variable is already set, so that frames render without a display (CI, Colab, notebooks run by
papermill) and without SDL's complaint about a missing ``XDG_RUNTIME_DIR``. To see a CartPole
window elsewhere in the same process, set ``SDL_VIDEODRIVER`` (e.g. to ``x11``) before
importing this module. It also hides pygame's greeting on import (``PYGAME_HIDE_SUPPORT_PROMPT``).
"""

from __future__ import annotations

import os

# Before pygame can start its video system, which reads the driver once.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import math  # noqa: E402
import numbers  # noqa: E402
from typing import Any, SupportsFloat  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.envs.classic_control import CartPoleEnv  # noqa: E402
from PIL import Image  # noqa: E402

from wmbook.envs import make_env  # noqa: E402

LAYOUTS = ("chw", "hwc")
Crop = tuple[int, int, int, int]  # (top, bottom, left, right) of the full frame, end-exclusive

# Drawing constants of Gymnasium's CartPole renderer (classic_control/cartpole.py), in pixels.
_CART_Y = 100  # height of the cart's centre above the frame's bottom edge ("carty" there)
_CART_HEIGHT = 30.0
_AXLE_OFFSET = _CART_HEIGHT / 4
_POLE_WIDTH = 10.0
_CROP_MARGIN = 4  # room for anti-aliased edges and a pole slightly past the angle limit
FOVEA_HALF_WIDTH = 64  # source columns either side of the cart's centre (the tip at 30 degrees)
_DARK = 60  # the cart's body is black; the pole, the axle and the background are lighter


def _int_at_least(value: Any, low: int) -> int | None:
    """``value`` as an int if it is an integer (not a bool) of at least ``low``, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        return None
    return int(value)


def _frame_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``: an int means a square frame."""
    pair = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    checked = tuple(_int_at_least(s, 1) for s in pair)
    if len(checked) != 2 or None in checked:
        raise ValueError(f"size must be a positive integer or a (height, width) pair of them, got {size!r}")
    return checked  # type: ignore[return-value]


def cartpole_crop(env: gym.Env) -> Crop:
    """The band of CartPole's frame that holds the cart and pole: ``(top, bottom, left, right)``.

    Rows run from just above the upright pole's tip to just below the cart, computed from the
    environment's screen size, track length and pole length (the default CartPole gives
    ``(168, 320, 0, 600)`` of a 400 x 600 frame); columns span the whole track. Every state with
    the pole above the horizontal (``|theta| <= pi/2``, far beyond the 12 degrees at which an
    episode ends) is drawn within these rows.
    """
    core = env.unwrapped
    needed = ("screen_width", "screen_height", "x_threshold", "length")
    if not all(hasattr(core, name) for name in needed):
        raise TypeError(f"cartpole_crop needs a CartPole environment, got {core}")
    scale = core.screen_width / (2 * core.x_threshold)  # pixels per metre of track
    pole_length = scale * 2 * core.length
    tip = _CART_Y + _AXLE_OFFSET + pole_length - _POLE_WIDTH / 2  # from the bottom
    cart_bottom = _CART_Y - _CART_HEIGHT / 2
    top = max(0, math.floor(core.screen_height - tip) - _CROP_MARGIN)
    bottom = min(core.screen_height, math.ceil(core.screen_height - cart_bottom) + _CROP_MARGIN + 1)
    return top, bottom, 0, core.screen_width


def cartpole_cart_column(frame: np.ndarray, env: gym.Env) -> int:
    """The column of the cart's centre in CartPole's full rendered frame ``(h, w, 3)`` uint8.

    The middle of the columns holding dark pixels in the rows of the cart's body above the
    track line (the track is drawn as a dark line through the cart's centre, so those rows are
    left out). A cart partly beyond the frame's edge gives the middle of its visible part; a
    frame without any (the cart wholly outside it) gives the frame's centre.
    """
    first, last = _cart_body_rows(env)
    rows = frame[first:last]
    # every channel below _DARK (the same as their maximum, without numpy's slow reduction over 3)
    black = (rows[..., 0] < _DARK) & (rows[..., 1] < _DARK) & (rows[..., 2] < _DARK)
    dark = np.flatnonzero(black.any(axis=0))
    return int(round((dark[0] + dark[-1]) / 2)) if len(dark) else frame.shape[1] // 2


def _cart_body_rows(env: gym.Env) -> tuple[int, int]:
    """The rows ``[first, last)`` of CartPole's full frame in which :func:`cartpole_cart_column`
    looks for the cart's body."""
    core = env.unwrapped
    cart_top = core.screen_height - (_CART_Y + _CART_HEIGHT / 2)
    return math.ceil(cart_top) + 1, core.screen_height - _CART_Y - 2


def _check_crop(crop: Any) -> Crop:
    box = tuple(_int_at_least(c, 0) for c in crop) if isinstance(crop, (tuple, list)) else ()
    if len(box) != 4 or None in box or box[0] >= box[1] or box[2] >= box[3]:
        raise ValueError(f"crop must be 'auto', None or (top, bottom, left, right) with 0 <= top < bottom "
                         f"and 0 <= left < right, got {crop!r}")
    return box  # type: ignore[return-value]


class PixelObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observations become the rendered frame, cropped and downscaled to ``size``.

    Args:
        env: made with ``render_mode="rgb_array"``; its ``render()`` gives uint8 ``(h, w, 3)``.
        size: output ``H = W = size``, or a pair ``(H, W)``.
        layout: ``"chw"`` gives ``(3, H, W)`` (torch's convention), ``"hwc"`` gives ``(H, W, 3)``.
        crop: ``(top, bottom, left, right)`` rows and columns of the full frame to keep
            (end-exclusive); ``None`` keeps the whole frame; ``"auto"`` picks
            :func:`cartpole_crop` for CartPole and the whole frame for anything else.
        fovea: CartPole only: the top half of the output is a window centred on the cart (see
            the module's docstring), the bottom half the cropped band.
        read_surface: CartPole only: read the frame from the surface CartPole draws on instead
            of through ``render()``'s copy (the same pixels, in about half the time; see
            :meth:`_render`). ``False`` always goes through ``render()``.

    Observations are fresh, C-contiguous uint8 arrays in ``Box(0, 255, shape, uint8)``.
    ``info["state"]`` holds the wrapped environment's own observation of the same step. The
    wrapper's ``render()`` still returns the full, unprocessed frame; :meth:`frame` returns the
    processed one without stepping (useful after setting ``env.unwrapped.state`` by hand).
    """

    def __init__(self, env: gym.Env, size: int | tuple[int, int] = 64, layout: str = "chw",
                 crop: Crop | str | None = "auto", fovea: bool = False, read_surface: bool = True):
        gym.utils.RecordConstructorArgs.__init__(self, size=size, layout=layout, crop=crop, fovea=fovea,
                                                 read_surface=read_surface)
        gym.Wrapper.__init__(self, env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"PixelObservation needs an environment made with render_mode='rgb_array', got "
                             f"render_mode={env.render_mode!r}: use gym.make(env_id, render_mode='rgb_array') "
                             f"or make_pixel_env(env_id)")
        self.height, self.width = _frame_size(size)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be 'chw' (channels first, torch) or 'hwc' (channels last), got {layout!r}")
        self.layout = layout
        if isinstance(crop, str):
            if crop != "auto":
                raise ValueError(f"crop must be 'auto', None or (top, bottom, left, right), got {crop!r}")
            is_cartpole = isinstance(env.unwrapped, CartPoleEnv)
            self.crop: Crop | None = cartpole_crop(env) if is_cartpole else None
        else:
            self.crop = None if crop is None else _check_crop(crop)
        self.fovea = bool(fovea)
        # CartPole's surface is read directly (see _render) until a frame read so differs from render()
        self._reads_surface = (bool(read_surface) and isinstance(env.unwrapped, CartPoleEnv)
                               and hasattr(_pygame_image(), "tobytes"))
        self._surface_checked = False
        self._canvas: np.ndarray | None = None  # the frame the surface's rows are read into, reused
        if self.fovea:
            if not isinstance(env.unwrapped, CartPoleEnv):
                raise ValueError(f"fovea=True finds CartPole's cart in the frame; {env.unwrapped} is not CartPole")
            if self.height < 2:
                raise ValueError(f"fovea=True splits the frame's rows in two; size {size!r} has fewer than 2")
            self.crop = self.crop or (0, env.unwrapped.screen_height, 0, env.unwrapped.screen_width)
        shape = (3, self.height, self.width) if layout == "chw" else (self.height, self.width, 3)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}

    def frame(self) -> np.ndarray:
        """The current frame as an observation: rendered, cropped (or, with ``fovea``, cut into the
        window on the cart above the band), downscaled, uint8 ``shape``."""
        frame = self._render()
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            described = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"render() must return a uint8 (height, width, 3) RGB array, got {described}")
        if self.crop is not None:
            top, bottom, left, right = self.crop
            if bottom > frame.shape[0] or right > frame.shape[1]:
                raise ValueError(f"crop {self.crop} (top, bottom, left, right) reaches outside the rendered "
                                 f"frame of {frame.shape[0]} x {frame.shape[1]} pixels")
        if self.fovea:
            pixels = self._fovea(frame)
        else:
            if self.crop is not None:
                top, bottom, left, right = self.crop
                frame = frame[top:bottom, left:right]
            pixels = _shrink(frame, self.height, self.width)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)) if self.layout == "chw" else pixels.copy()

    def _render(self) -> np.ndarray:
        """The full frame ``(h, w, 3)`` uint8: ``render()``'s, or for CartPole the same pixels read
        from the surface it draws on.

        CartPole's ``render()`` spends more than half of its time copying its whole pygame surface
        through a transposed view (about 0.9 of 1.3 ms a frame on a 2-core CPU). Asked to render in
        a mode other than ``"human"`` and ``"rgb_array"``, it draws onto the same surface and
        returns nothing; only the rows the observation uses (the crop's, and with the fovea the
        cart's) are then read from the surface, in row order, into a frame whose other rows stay
        white. The first frame's rows are compared with ``render()``'s, and a renderer that draws
        otherwise gets ``render()`` from then on.
        """
        if not self._reads_surface:
            return self.env.render()
        core = self.env.unwrapped
        mode = core.render_mode
        core.render_mode = "surface"  # draw, do not copy
        try:
            core.render()
        finally:
            core.render_mode = mode
        screen = core.screen
        height, width = screen.get_height(), screen.get_width()
        top, bottom = (self.crop[0], self.crop[1]) if self.crop is not None else (0, height)
        if self.fovea:  # the cart is found in its body's rows, wherever the crop lies
            first, last = _cart_body_rows(self.env)
            top, bottom = min(top, first), max(bottom, last)
        if bottom > height:  # render() reports the crop that does not fit
            self._reads_surface = False
            return self.env.render()
        if self._canvas is None or self._canvas.shape != (height, width, 3):
            self._canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        rows = _pygame_image().tobytes(screen.subsurface((0, top, width, bottom - top)), "RGB")
        self._canvas[top:bottom] = np.frombuffer(rows, np.uint8).reshape(bottom - top, width, 3)
        if not self._surface_checked:
            self._surface_checked = True
            rendered = self.env.render()
            if not np.array_equal(self._canvas[top:bottom], rendered[top:bottom]):
                self._reads_surface = False
                return rendered
        return self._canvas

    def _fovea(self, frame: np.ndarray) -> np.ndarray:
        """The fovea view ``(H, W, 3)`` of a full CartPole frame: the window around the cart on top
        of the whole band."""
        top, bottom, left, right = self.crop
        centre = cartpole_cart_column(frame, self.env)
        cart_top = self.env.unwrapped.screen_height - (_CART_Y + _CART_HEIGHT / 2)
        rows = frame[top:min(bottom, math.ceil(cart_top) + _CROP_MARGIN)]
        # white beyond the frame's edges, so a cart at the end of the track stays centred; only the
        # window's own columns are copied
        first, last = centre - FOVEA_HALF_WIDTH, centre + FOVEA_HALF_WIDTH
        window = np.full((len(rows), last - first, 3), 255, dtype=np.uint8)
        inside = slice(max(first, 0), min(last, rows.shape[1]))
        window[:, inside.start - first:inside.stop - first] = rows[:, inside]
        upper = self.height // 2
        return np.concatenate([_shrink(window, upper, self.width),
                               _shrink(frame[top:bottom, left:right], self.height - upper, self.width)])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        state, info = self.env.reset(seed=seed, options=options)
        return self.frame(), {**info, "state": state}

    def step(self, action) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict]:
        state, reward, terminated, truncated, info = self.env.step(action)
        return self.frame(), reward, terminated, truncated, {**info, "state": state}


def _pygame_image():
    """pygame's image module (imported only when a CartPole frame is read)."""
    import pygame.image

    return pygame.image


def _shrink(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """``frame`` ``(h, w, 3)`` uint8 resized to ``(height, width, 3)`` with a box filter (each
    output pixel is the area-weighted mean of the source pixels under it)."""
    small = Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Each ``step`` repeats the action ``repeat`` times (frame skip) and sums the rewards.

    Repetition stops early when the episode terminates or is truncated, so an end is never
    stepped past; ``info["repeats"]`` says how many inner steps were taken. The observation
    and info are those of the last inner step. Rewards are summed without discounting, and a
    time limit inside counts inner steps (CartPole-v1's 500 steps become 500 / repeat).
    Place it inside :class:`PixelObservation` so that the skipped frames are never rendered.
    """

    def __init__(self, env: gym.Env, repeat: int):
        gym.utils.RecordConstructorArgs.__init__(self, repeat=repeat)
        gym.Wrapper.__init__(self, env)
        if _int_at_least(repeat, 1) is None:
            raise ValueError(f"repeat must be a positive integer, got {repeat!r}")
        self.repeat = int(repeat)

    def step(self, action) -> tuple[Any, float, bool, bool, dict]:
        total = 0.0
        for repeats in range(1, self.repeat + 1):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, {**info, "repeats": repeats}


def make_pixel_env(env_id: str = "CartPole-v1", size: int | tuple[int, int] = 64, seed: int | None = None,
                   *, layout: str = "chw", crop: Crop | str | None = "auto", action_repeat: int = 1,
                   fovea: bool = False, read_surface: bool = True, **kwargs) -> PixelObservation:
    """``gymnasium.make(env_id, render_mode="rgb_array", **kwargs)`` seen through its pixels.

    ``seed`` seeds the action space (reset the environment with a seed for reproducible
    frames); ``action_repeat > 1`` adds :class:`ActionRepeat` beneath the pixels. ``size``,
    ``layout``, ``crop``, ``fovea`` and ``read_surface`` are :class:`PixelObservation`'s.
    """
    if kwargs.get("render_mode", "rgb_array") != "rgb_array":
        raise ValueError(f"pixel observations need render_mode='rgb_array', got {kwargs['render_mode']!r}")
    kwargs["render_mode"] = "rgb_array"
    env = make_env(env_id, seed=seed, **kwargs)
    if action_repeat != 1:
        env = ActionRepeat(env, action_repeat)
    return PixelObservation(env, size=size, layout=layout, crop=crop, fovea=fovea, read_surface=read_surface)
