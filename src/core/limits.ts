// Chunk size bounds shared by the CLI, push and receive (kept apart so the CLI
// can show them without loading the data path).
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024;
