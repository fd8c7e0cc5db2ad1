"""Replay storage: single transitions (:mod:`~wmbook.buffers.replay`) for Q-learning and
one-step models, whole episodes (:mod:`~wmbook.buffers.sequence`) for recurrent world models."""


from wmbook.buffers.replay import ReplayBuffer, Transitions
from wmbook.buffers.sequence import ACTION_KINDS, Episode, SequenceBatch, SequenceBuffer

__all__ = ["ACTION_KINDS", "Episode", "ReplayBuffer", "SequenceBatch", "SequenceBuffer", "Transitions"]
