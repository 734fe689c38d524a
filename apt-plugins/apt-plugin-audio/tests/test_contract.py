"""The provider conformance suite of apt-core, run against encoder.logmel_conv."""

import math
import struct
import wave

import pytest

from apt.testing import ProviderContract
from apt_plugin_audio.provider import LogMelConvProvider


class TestLogMelConvContract(ProviderContract):
    provider = LogMelConvProvider

    @pytest.fixture
    def media_sample(self, tmp_path):
        """Half a second of a 440 Hz tone at 16 kHz, 16-bit mono."""
        path = tmp_path / "tone.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16000)))
                                   for i in range(8000)))
        return path
