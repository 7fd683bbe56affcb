// "-": the session runs over stdin/stdout (for ssh pipes and socat EXEC).
import { streamConn } from "./stream-conn.ts";
import type { Conn, Listener, Transport } from "./types.ts";

export class StdioTransport implements Transport {
  async connect(): Promise<Conn> {
    return streamConn(process.stdin, process.stdout, "stdin/stdout", false, () => process.stdin.pause());
  }
  async listen(): Promise<Listener> {
    let given = false;
    return {
      description: "stdin/stdout",
      accept: async () => {
        if (given) return null;
        given = true;
        return this.connect();
      },
      close: async () => {},
    };
  }
}
