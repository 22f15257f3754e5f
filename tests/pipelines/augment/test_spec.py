"""pipelines.augment.spec: config ops to albumentations, their errors, fitted to the image size."""

from __future__ import annotations

import pytest

from pipelines.augment import BatchAugment, build_albumentations, fit_to_size
from pipelines.config import recipe_augment
from pipelines.errors import UserError


def test_default_config_is_batched():
    batch = BatchAugment.from_ops(recipe_augment())
    assert isinstance(batch, BatchAugment)
    with pytest.raises(AttributeError):
        batch.steps = ()  # immutable


def test_bad_ops_raise_user_errors():
    with pytest.raises(UserError, match=r"augment.ops\[1\]: unknown albumentations transform 'Foo'"):
        build_albumentations([recipe_augment()[0], {"name": "Foo"}])
    with pytest.raises(UserError, match=r"augment.ops\[0\] \(HorizontalFlip\).*bogus"):
        BatchAugment.from_ops([{"name": "HorizontalFlip", "bogus": 1}])
    with pytest.raises(UserError, match=r"augment.ops\[0\] \(CoarseDropout\).*hole_height_range"):
        build_albumentations([{"name": "CoarseDropout", "hole_height_range": [8, 4]}])
    with pytest.raises(UserError, match="unknown albumentations transform 'to_dict'"):
        build_albumentations([{"name": "to_dict"}])
    with pytest.raises(UserError, match="fill"):
        BatchAugment.from_ops([{"name": "CoarseDropout", "fill": 300}])


def test_the_recipe_pipeline_follows_the_image_size_and_custom_ones_stay_as_written():
    fitted = fit_to_size(recipe_augment(), 28, 28)
    assert (fitted[0]["min_height"], fitted[1]["height"], fitted[3]["hole_height_range"]) == (36, 28, [7, 7])
    assert fit_to_size(recipe_augment(), 32, 32) == recipe_augment()
    custom = ({"name": "HorizontalFlip", "p": 0.5},)
    assert fit_to_size(custom, 64, 64) == custom
