// Reads NumPy .npy files (format versions 1-3, C order, little-endian) into typed arrays.

const TYPES = {
  "<f4": Float32Array,
  "<f8": Float64Array,
  "|i1": Int8Array,
  "<i1": Int8Array,
  "<i4": Int32Array,
  "<i8": BigInt64Array,
};

/** {dtype, shape, data} of the .npy file in `bytes` (a Uint8Array). Throws Error when it is not one. */
export function parseNpy(bytes) {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) throw new Error("not a .npy file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !(descr in TYPES) || fortran !== "False" || shapeText === undefined) {
    throw new Error(`unsupported .npy header ${header.trim()}`);
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const Type = TYPES[descr];
  const offset = start + headerLength;
  if (bytes.length - offset !== count * Type.BYTES_PER_ELEMENT) throw new Error(".npy data size does not match its shape");
  const data = new Type(bytes.slice(offset).buffer); // a copy: aligned whatever the header length
  return { dtype: descr, shape, data };
}
