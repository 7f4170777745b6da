"""Data: corpus readers -> `Utterance` manifests -> tokenised, bucketed batches of raw 16 kHz audio."""

from .audio import SAMPLE_RATE, AudioError, audio_info, load_audio
from .corpora import AN4_VAL_SPEAKERS, CORPORA, read_an4, read_corpus, read_librispeech, read_tedlium
from .datamodule import ASRDataModule, build_datamodule
from .dataset import ASRDataset, BadAudioWarning, Example, Skipped, collate
from .manifest import Utterance, read_manifest, write_manifest
from .sampler import BucketBatchSampler
from .text import CharTokenizer, normalise

__all__ = ["AN4_VAL_SPEAKERS", "ASRDataModule", "ASRDataset", "AudioError", "BadAudioWarning",
           "BucketBatchSampler", "CORPORA", "CharTokenizer", "Example", "SAMPLE_RATE", "Skipped", "Utterance",
           "audio_info", "build_datamodule", "collate", "load_audio", "normalise", "read_an4",
           "read_corpus", "read_librispeech", "read_manifest", "read_tedlium", "write_manifest"]
