"""The node's own media: RTP endpoints the node terminates (IVR, announcements, voicemail,
conferences, music on hold), driven by one shared 20 ms clock.

The pure pieces (G.711, tones, DTMF detection, mixing, WAV, the clock model) live in
``node.media``; this package holds the asyncio side:

* ``MediaEngine`` (engine.py): owns the clock, the prompt cache and the endpoints; one per
  node, sharing the relay's ``PortPool``. ``await engine.open_endpoint(call_id, tenant)``.
* ``MediaEndpoint`` (endpoint.py): one RTP stream. SDP: ``answer(offer)``, ``offer()``,
  ``accept_answer(answer)``. Output: ``await play([...], interruptible=...)``,
  ``tone('ringback')``, ``listen(moh)``, ``send_dtmf('5')``, ``stop_output()``. Input:
  ``await get_digit(timeout)``, ``record(path)``. ``bridge(other)`` joins two endpoints
  (a transfer out of an application), ``Conference`` (conference.py) mixes N of them.
  Each endpoint speaks RTCP (SR/RR, SDES, BYE: node/media/rtcp.py) on its RTP port + 1;
  round-trip time, loss and jitter go to metrics.py and to one log line at close.
* ``MusicOnHold`` (moh.py): one decoded/encoded source shared by all its listeners.
* ``PromptLibrary`` (prompts.py): default prompts (espeak-ng + sox) and per-tenant uploads.
"""

from node.media_engine.conference import Conference
from node.media_engine.endpoint import MediaEndpoint, Playback
from node.media_engine.engine import MediaEngine
from node.media_engine.moh import MusicOnHold

__all__ = ["MediaEngine", "MediaEndpoint", "Playback", "MusicOnHold", "Conference"]
