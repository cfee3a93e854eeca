"""CPU decoding of the frames a sample's views need, from the video bytes of a shard member.

PyAV is the default: it seeks to the keyframe before each run of wanted frames, decodes in order, tells each
frame's index from its timestamp, and does not decode the non-reference frames no view wants (1.13-1.6x
torchcodec per sample, BENCHMARKS.md). torchcodec (PyTorch's decoder, the fastest at decoding whole videos) stays
selectable as ``data.cpu_decoder=torchcodec``. Decoders are chosen by name from
``vmae.pipeline.data.backends.CPU_DECODERS``.

Frames come back as one uint8 [H, W, 3] array per wanted frame, not stacked: the views copy only their crops.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from functools import lru_cache
from typing import Protocol

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vmae.pipeline.data.backends import cpu_decoder

log = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """A sample whose video cannot give the requested frames; the loader counts and replaces it."""


class FrameDecoder(Protocol):
    """What a CPU decoder registered in ``CPU_DECODERS`` is."""

    def __call__(self, video: bytes, indices: np.ndarray, decoded: list[int] | None = None) -> list[np.ndarray]:
        """The frames at the sorted, distinct ``indices`` of ``video``, one uint8 [H, W, 3] array each;
        ``decoded``, if given, receives the index of every frame decoded to get them (left empty by a decoder
        that cannot tell). Raises DecodeError, or anything else, when it cannot."""


def decode_frames(video: bytes, indices: np.ndarray, decoder: str = "pyav",
                  decoded: list[int] | None = None) -> list[np.ndarray]:
    """Frames at the sorted, distinct ``indices``, one uint8 [H, W, 3] array each, by the decoder named
    ``decoder``; with PyAV, ``decoded`` receives the index of every frame the decoder produced (its work)."""
    decode = cpu_decoder(decoder)  # outside the try: an unknown name is a config error, not a bad sample
    try:
        return decode(video, indices, decoded=decoded)
    except DecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad sample, not a crashed epoch
        raise DecodeError(f"{type(err).__name__}: {err}") from None


@lru_cache(maxsize=None)
def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode here (not installed, or no FFmpeg libraries it can load), or None; the
    reason is logged once and PyAV decodes instead, rather than every sample failing."""
    try:
        # optional dependency, and its import loads FFmpeg's shared libraries: tried only when it is chosen
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as err:  # noqa: BLE001 - torchcodec raises RuntimeError when FFmpeg's libraries are missing
        problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.warning("torchcodec cannot decode here (%s): PyAV decodes instead (data.cpu_decoder=pyav silences this;"
                    " `pip install torchcodec` plus FFmpeg's shared libraries restore the faster decoder)", problem)
        return problem
    return None


def torchcodec_frames(video: bytes, indices: np.ndarray, decoded: list[int] | None = None) -> list[np.ndarray]:
    """torchcodec's exact seek to each wanted frame; PyAV decodes instead where torchcodec cannot load. It does
    not say what it decoded: ``decoded`` stays empty."""
    if torchcodec_problem() is not None:
        return pyav_frames(video, indices, decoded=decoded)
    from torchcodec.decoders import VideoDecoder  # optional: torchcodec_problem() has just shown it imports

    decoder = VideoDecoder(video, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    available = decoder.metadata.num_frames
    if available is not None and indices[-1] >= available:
        raise DecodeError(f"frame {indices[-1]} requested, the stream holds {available}")
    return list(decoder.get_frames_at(indices.tolist()).data.numpy())


def pyav_frames(video: bytes, indices: np.ndarray, reseek_gap: int = 32, skip_unneeded: bool = True,
                decoded: list[int] | None = None) -> list[np.ndarray]:
    """Decode in order from the keyframe before each run of wanted frames; a gap longer than ``reseek_gap``
    frames seeks again instead of decoding through it. With ``skip_unneeded``, a non-reference frame (no other
    frame is predicted from it: most B-frames) that is not wanted is not decoded at all. ``decoded`` receives the
    index of every frame the decoder produced (its work)."""
    wanted = [int(i) for i in indices]
    wanted_set = set(wanted)
    out: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        codec = stream.codec_context
        rate, tb, start = stream.average_rate, stream.time_base, stream.start_time or 0

        def index_of(pts: int) -> int:
            return int(round(float((pts - start) * tb * rate)))

        def decoded_from_seek() -> Iterator[av.VideoFrame]:
            for packet in container.demux(stream):
                if skip_unneeded and packet.pts is not None:
                    # FFmpeg reads skip_frame as each packet is decoded, so it can change packet by packet
                    codec.skip_frame = "DEFAULT" if index_of(packet.pts) in wanted_set else "NONREF"
                yield from codec.decode(packet)  # the last, empty packet flushes the frames held for reordering

        reformatter = VideoReformatter()  # one conversion context for every frame (to_ndarray makes one each)
        pos = 0
        while pos < len(wanted):
            target = wanted[pos]
            container.seek(start + int(round(target / rate / tb)) if target > 0 else start, stream=stream,
                           backward=True)
            codec.flush_buffers()
            for frame in decoded_from_seek():
                index = index_of(frame.pts)
                if decoded is not None:
                    decoded.append(index)
                if index < target:
                    continue
                if index > target:  # the stream skipped the frame we wanted
                    raise DecodeError(f"frame {target} is missing from the stream")
                # a view of the converted frame's own buffer: no copy until the views cut their crops
                out[index] = reformatter.reformat(frame, format="rgb24").to_ndarray()
                pos += 1
                if pos == len(wanted) or wanted[pos] - index > reseek_gap:
                    break
                target = wanted[pos]
            else:
                break
    if len(out) != len(wanted):
        missing = [i for i in wanted if i not in out]
        raise DecodeError(f"{len(missing)} frame(s) missing from the stream, first {missing[0]}")
    return [out[i] for i in wanted]


def reference_frames(video: bytes) -> np.ndarray:
    """Every frame in decode order as uint8 [N, H, W, 3]: the plain decode the fast paths are checked against."""
    with av.open(io.BytesIO(video)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
