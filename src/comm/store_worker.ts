/**
 * The rendezvous store's own thread (see ThreadedStoreServer in store_server.ts). Messages in:
 * {op: "listen", hostname, port, secret, maxConnections} and {op: "close", lingerMs}; out: {port} or {error, portTaken}, {closed}.
 */
/// <reference lib="deno.worker" />
import { StoreServer } from "./store_server.ts";
import { MasterPortTakenError } from "./comm.ts";

let server: StoreServer | undefined;
self.onmessage = async (event: MessageEvent) => {
  const msg = event.data;
  if (msg.op === "listen") {
    try {
      server = StoreServer.listen(msg.hostname, msg.port, msg.secret, msg.maxConnections);
      self.postMessage({ port: server.port });
    } catch (error) {
      const portTaken = error instanceof MasterPortTakenError;
      self.postMessage({ error: (error as Error).message, portTaken });
    }
  } else if (msg.op === "close") {
    await server?.close(msg.lingerMs);
    self.postMessage({ closed: true });
  }
};
