"""The embedded broker: kombu's filesystem transport, with each message written atomically.

kombu writes a message file in place (create, lock, write). Its consumer takes no lock: it
lists the folder, moves the first file out and parses it, so a file caught between its
creation and its write is read empty, and the worker dies on the JSON error ("Unrecoverable
error: JSONDecodeError", celery/kombu#1551). Under ``make demo``'s shadow traffic (several
tasks a second from web, beat and the worker) that happened within two minutes. Here the
message is written under a name no consumer picks up and renamed into place when complete
(``os.replace`` is atomic within a folder).

The exchange table in the control folder has the same race when several processes declare
the first binding at once (web, worker and beat at the first start): kombu creates the file,
then locks and writes it, and a reader in between gets an empty table. Here the first table
is written aside and linked into place, so it appears whole; later updates take kombu's
exclusive lock, which its readers wait for.
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

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        if not file.exists():
            entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
            partial = file.with_name(f"{file.name}.{uuid.uuid4().hex}.part")
            try:
                partial.write_bytes(str_to_bytes(dumps([entry])))
                try:
                    os.link(partial, file)  # fails if another process created it first
                    return
                except FileExistsError:
                    pass
            except OSError as exc:
                raise ChannelError(f"Cannot create {file}") from exc
            finally:
                partial.unlink(missing_ok=True)
        super()._queue_bind(exchange, routing_key, pattern, queue)


class Transport(filesystem.Transport):
    Channel = Channel
