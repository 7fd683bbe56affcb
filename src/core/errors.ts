// The error codes live in src/errors.ts, below every layer that throws them
// (transport, thunderbolt, util, core); core code imports them from here too.
export * from "../errors.ts";
