// How core code reports progress without printing: src/ui implements this.

export interface ProgressInfo {
  /** what is happening, e.g. "push", "receive", "verify", "restore" */
  phase: string;
  /** raw bytes processed so far, and in all (0 when unknown) */
  bytes: number;
  total: number;
  /** compressed bytes so far, when known (for the ratio) */
  stored?: number;
  /** files so far (file-level backups) */
  files?: number;
}

export interface Reporter {
  progress(p: ProgressInfo): void;
  /** a notable event, one line (e.g. "waiting for the receiver") */
  info(message: string): void;
  /** the progress display is over (success or not) */
  stop(): void;
}

export const silentReporter: Reporter = {
  progress() {},
  info() {},
  stop() {},
};
