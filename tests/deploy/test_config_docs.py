"""The configuration reference covers every setting of every service."""

from __future__ import annotations

import importlib.util

from tests.deploy.schemas import ROOT


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts/gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_field_of_every_settings_class_is_documented():
    gen = load_generator()
    text = gen.render()
    _, services = gen._classes()
    for _, cls in services:  # each includes the base fields, under its own prefix
        for name, field in cls.model_fields.items():
            assert f"`{gen.env_names(cls, name, field)[0]}`" in text, f"{cls.__name__}.{name}"
    assert "`LLMSERVE_WORKER_MAX_NUM_SEQS`" in text and "`REDIS_URL` / `LLMSERVE_REDIS_URL`" in text
