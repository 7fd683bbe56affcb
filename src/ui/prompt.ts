// One question on the terminal. Ctrl-C there is an interrupt like anywhere
// else (the command's SIGINT handler says what was left and exits 130); Ctrl-D
// (end of input) is an answer: none, which the caller treats as "no".
import * as readline from "node:readline";

/** The line typed, or null at end of input (Ctrl-D, a closed stdin). */
export function ask(question: string): Promise<string | null> {
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
    let settled = false;
    const settle = (answer: string | null) => {
      if (settled) return;
      settled = true;
      rl.close();
      resolve(answer);
    };
    // readline keeps the terminal raw, so Ctrl-C arrives as a key, not as a
    // signal: raise the signal itself, and never answer (the handler exits).
    rl.on("SIGINT", () => {
      settled = true;
      rl.close();
      process.kill(process.pid, "SIGINT");
    });
    rl.on("close", () => settle(null));
    rl.question(question, (answer) => settle(answer));
  });
}
