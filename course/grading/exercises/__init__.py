"""The exercises of each lesson, one module per lesson; importing them registers them."""

from course.grading.exercises import (  # noqa: F401
    dqn,
    marl,
    mdp,
    meta,
    multitask,
    replay,
    td,
    transfer,
)
