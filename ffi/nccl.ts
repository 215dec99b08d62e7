/**
 * NCCL's own symbols (libnccl.so.2), bound directly: the communicators, collectives and
 * point-to-point calls DistAttn needs. Every function returns an ncclResult_t (i32, 0 = success).
 * Device buffers and streams travel as usize, as in ffi/distflash.ts.
 */

const result = "i32" as const;
const dptr = "usize" as const; // const void* / void* device buffer
const comm = "usize" as const; // ncclComm_t
const stream = "usize" as const; // cudaStream_t

/** ncclUniqueId is a 128-byte struct passed by value to ncclCommInitRank. */
export const NCCL_UNIQUE_ID_BYTES = 128;
const uniqueIdByValue = { struct: Array(16).fill("u64") } as const;

export const NCCL_SYMBOLS = {
  // ncclResult_t ncclGetVersion(int *version)
  ncclGetVersion: { parameters: ["buffer"], result },
  // const char *ncclGetErrorString(ncclResult_t result)
  ncclGetErrorString: { parameters: ["i32"], result: "pointer" },
  // const char *ncclGetLastError(ncclComm_t comm)
  ncclGetLastError: { parameters: [comm], result: "pointer" },
  // ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)
  ncclGetUniqueId: { parameters: ["buffer"], result },
  // ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
  ncclCommInitRank: { parameters: ["buffer", "i32", uniqueIdByValue, "i32"], result },
  // ncclResult_t ncclCommDestroy(ncclComm_t comm)
  ncclCommDestroy: { parameters: [comm], result },
  // ncclResult_t ncclCommAbort(ncclComm_t comm)
  ncclCommAbort: { parameters: [comm], result },
  // ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError)
  ncclCommGetAsyncError: { parameters: [comm, "buffer"], result },
  // ncclResult_t ncclGroupStart(void)
  ncclGroupStart: { parameters: [], result },
  // ncclResult_t ncclGroupEnd(void)
  ncclGroupEnd: { parameters: [], result },
  // ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
  //                       ncclComm_t comm, cudaStream_t stream)
  ncclSend: { parameters: [dptr, "usize", "i32", "i32", comm, stream], result },
  // ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
  //                       ncclComm_t comm, cudaStream_t stream)
  ncclRecv: { parameters: [dptr, "usize", "i32", "i32", comm, stream], result },
  // ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
  //                            ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
  //                            cudaStream_t stream)
  ncclAllReduce: { parameters: [dptr, dptr, "usize", "i32", "i32", comm, stream], result },
  // ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
  //                                ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
  //                                cudaStream_t stream)
  ncclReduceScatter: { parameters: [dptr, dptr, "usize", "i32", "i32", comm, stream], result },
  // ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
  //                            ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream)
  ncclAllGather: { parameters: [dptr, dptr, "usize", "i32", comm, stream], result },
  // ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
  //                            ncclDataType_t datatype, int root, ncclComm_t comm,
  //                            cudaStream_t stream)
  ncclBroadcast: { parameters: [dptr, dptr, "usize", "i32", "i32", comm, stream], result },
} as const satisfies Deno.ForeignLibraryInterface;

export type NcclSymbols = Deno.DynamicLibrary<typeof NCCL_SYMBOLS>["symbols"];

/** ncclDataType_t values (nccl.h). */
export const NcclDataType = {
  int8: 0,
  uint8: 1,
  int32: 2,
  uint32: 3,
  int64: 4,
  uint64: 5,
  float16: 6,
  float32: 7,
  float64: 8,
  bfloat16: 9,
} as const;

/** ncclRedOp_t values (nccl.h). */
export const NcclRedOp = { sum: 0, prod: 1, max: 2, min: 3, avg: 4 } as const;

/** NCCL encodes its version as major*10000 + minor*100 + patch (since 2.9). */
export function formatNcclVersion(code: number): string {
  const major = Math.floor(code / 10000);
  const minor = Math.floor((code % 10000) / 100);
  return `${major}.${minor}.${code % 100}`;
}
