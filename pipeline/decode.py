"""CPU decoding of the frames a sample's views need, from the video bytes of a shard member.

torchcodec (PyTorch's decoder) is the default: it seeks to the keyframe before each wanted frame and was the
fastest CPU decoder measured here (DESIGN.md section 4). PyAV is the fallback and the reference: it decodes
in order and tells each frame's index from its timestamp.
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache

import av
import numpy as np
from av.video.reformatter import VideoReformatter
import torch

log = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """A sample whose video cannot give the requested frames; the loader counts and replaces it."""


def decode_frames(video: bytes, indices: np.ndarray, decoder: str = "torchcodec",
                  skip_nonref: bool = False) -> torch.Tensor:
    """Frames at the sorted, distinct ``indices`` as uint8 [F, H, W, 3]. ``skip_nonref``: the wanted frames are
    all reference frames, so the (PyAV) decoder may skip every non-reference one."""
    try:
        if decoder == "torchcodec" and not skip_nonref and torchcodec_problem() is None:
            return _torchcodec_frames(video, indices)
        return pyav_frames(video, indices, skip_nonref=skip_nonref)
    except DecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad sample, not a crashed epoch
        raise DecodeError(f"{type(err).__name__}: {err}") from None


@lru_cache(maxsize=None)
def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode here (not installed, or no FFmpeg libraries it can load), or None; the
    reason is logged once and PyAV decodes instead, rather than every sample failing."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as err:  # noqa: BLE001 - torchcodec raises RuntimeError when FFmpeg's libraries are missing
        problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.warning("torchcodec cannot decode here (%s): PyAV decodes instead (data.cpu_decoder=pyav silences this;"
                    " `pip install torchcodec` plus FFmpeg's shared libraries restore the faster decoder)", problem)
        return problem
    return None


def _torchcodec_frames(video: bytes, indices: np.ndarray) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(video, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    available = decoder.metadata.num_frames
    if available is not None and indices[-1] >= available:
        raise DecodeError(f"frame {indices[-1]} requested, the stream holds {available}")
    return decoder.get_frames_at(indices.tolist()).data


def pyav_frames(video: bytes, indices: np.ndarray, reseek_gap: int = 32, skip_nonref: bool = False) -> torch.Tensor:
    """Decode in order from the keyframe before each run of wanted frames; a gap longer than ``reseek_gap``
    frames seeks again instead of decoding through it."""
    wanted = [int(i) for i in indices]
    out: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        if skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        rate = stream.average_rate
        tb = stream.time_base
        start = stream.start_time or 0
        reformatter = VideoReformatter()  # one conversion context for every frame (to_ndarray makes one each)
        pos = 0
        while pos < len(wanted):
            target = wanted[pos]
            if target > 0:
                container.seek(start + int(round(target / rate / tb)), stream=stream, backward=True)
            else:
                container.seek(start, stream=stream, backward=True)
            for frame in container.decode(stream):
                index = int(round(float((frame.pts - start) * tb * rate)))
                if index < target:
                    continue
                if index > target:  # the stream skipped the frame we wanted
                    raise DecodeError(f"frame {target} is missing from the stream")
                if index == target:
                    out[index] = reformatter.reformat(frame, format="rgb24").to_ndarray()
                    pos += 1
                    if pos == len(wanted):
                        break
                    if wanted[pos] - index > reseek_gap:
                        break
                    target = wanted[pos]
            else:
                break
    if len(out) != len(wanted):
        missing = [i for i in wanted if i not in out]
        raise DecodeError(f"{len(missing)} frame(s) missing from the stream, first {missing[0]}")
    return torch.from_numpy(np.stack([out[i] for i in wanted]))


def reference_frames(video: bytes) -> np.ndarray:
    """Every frame in decode order as uint8 [N, H, W, 3]: the plain decode the fast paths are checked against."""
    with av.open(io.BytesIO(video)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
