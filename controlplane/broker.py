"""The embedded broker: kombu's filesystem transport, with each message written atomically.

kombu writes a message file in place (create, lock, write). Its consumer takes no lock: it
lists the folder, moves the first file out and parses it, so a file caught between its
creation and its write is read empty, and the worker dies on the JSON error ("Unrecoverable
error: JSONDecodeError", celery/kombu#1551). Under ``make demo``'s shadow traffic (several
tasks a second from web, beat and the worker) that happened within two minutes. Here the
message is written under a name no consumer picks up and renamed into place when complete
(``os.replace`` is atomic within a folder).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's own base classes name the second parameter differently (message, payload).
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        # The same name kombu gives a message (its consumer sorts by it: the queue stays FIFO).
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # "<time>_<uuid>.<queue>.msg.part": the consumer only takes "<queue>.msg" names.
        partial = f"{final}.part"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
