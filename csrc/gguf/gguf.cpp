// GGUF reader: maps the file read-only and walks the header, metadata and tensor infos once,
// checking every count, length, type id and offset against the bytes left before using it.
// Errors name the field, its index and the byte offset where it lives in the file.
#include "gguf/gguf.h"

#if defined(_WIN32)
#define NOMINMAX
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "core/common.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

namespace pyllm {

// ---------------------------------------------------------------------------------------------
// Format facts and limits

namespace {

constexpr uint32_t kMagic = 0x46554747;            // the bytes "GGUF" read as a little-endian u32
constexpr int kMaxArrayDepth = 16;                 // deeper nesting is hostile, not data
constexpr uint64_t kMaxAlignment = uint64_t(1) << 24;
constexpr size_t kMaxNameBytes = 63;               // ggml's GGML_MAX_NAME (64) counts the NUL
constexpr int kMaxDims = 4;
// The fewest bytes one entry can take. A count larger than (bytes left / this) cannot be true, so
// it is rejected before anything is allocated for it.
constexpr uint64_t kMinKVBytes = 8 + 1 + 4 + 1;                  // key length, key, type, UINT8
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name length, name, n_dims, ne[0], type, offset
constexpr uint64_t kMinNestedArrayBytes = 4 + 8;                 // element type, count
// Vectors sized from file counts reserve at most this many entries up front; beyond it they grow
// only as entries are actually read, so a lying count costs nothing.
constexpr uint64_t kMaxReserve = 1 << 16;

struct ValueTypeInfo {
    const char* name;
    size_t size;  // 0: variable size
};
constexpr ValueTypeInfo kValueTypes[] = {
    {"UINT8", 1}, {"INT8", 1},    {"UINT16", 2}, {"INT16", 2},  {"UINT32", 4},
    {"INT32", 4}, {"FLOAT32", 4}, {"BOOL", 1},   {"STRING", 0}, {"ARRAY", 0},
    {"UINT64", 8}, {"INT64", 8},  {"FLOAT64", 8},
};
constexpr uint32_t kNumValueTypes = sizeof(kValueTypes) / sizeof(kValueTypes[0]);

// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. ASCII goes 8 bytes at a
// time because the vocabulary (tens of thousands of strings) is mostly ASCII.
bool valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const auto* end = p + s.size();
    while (p < end) {
        if (end - p >= 8) {
            uint64_t w;
            std::memcpy(&w, p, 8);
            if (!(w & 0x8080808080808080ull)) { p += 8; continue; }
        }
        const unsigned c = *p;
        if (c < 0x80) { ++p; continue; }
        int n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF)      { n = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
        else return false;
        if (end - p <= n) return false;
        for (int k = 1; k <= n; ++k) {
            const unsigned cc = p[k];
            if ((cc & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return false;
        if (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) return false;
        p += n + 1;
    }
    return true;
}

// A name from the file made safe to print: non-printable bytes escaped, long names cut.
std::string printable(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    std::string out;
    const size_t limit = 80;
    for (size_t i = 0; i < s.size() && i < limit; ++i) {
        const unsigned char c = s[i];
        if (c >= 0x20 && c < 0x7F && c != '\\') out += char(c);
        else { out += "\\x"; out += hex[c >> 4]; out += hex[c & 15]; }
    }
    if (s.size() > limit) out += "...";
    return out;
}

std::string quoted(std::string_view s) { return "'" + printable(s) + "'"; }
std::string str(uint64_t v) { return std::to_string(v); }

using Describe = std::function<std::string()>;  // what is being read, built only on error

// ---------------------------------------------------------------------------------------------
// Bounds-checked cursor over the mapping

class Cursor {
public:
    Cursor(const std::string& path, const uint8_t* base, uint64_t size) : path_(path), base_(base), size_(size) {}

    uint64_t pos = 0;
    uint64_t left() const { return size_ - pos; }
    uint64_t size() const { return size_; }
    const uint8_t* here() const { return base_ + pos; }

    [[noreturn]] void error(uint64_t at, const std::string& msg) const {
        fail(ErrorKind::gguf, "GGUF file '" + path_ + "': " + msg + " (at byte " + str(at) + ")");
    }

    template <typename T, typename What>
    T read(const What& what) {
        if (left() < sizeof(T))
            error(pos, what() + ": needs " + str(sizeof(T)) + " bytes but the file ends after " + str(left()) +
                           " (file size " + str(size_) + ")");
        T v;
        std::memcpy(&v, base_ + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }

    template <typename What>
    std::string_view read_string(const What& what) {
        const uint64_t at = pos;
        const uint64_t len = read<uint64_t>([&] { return what() + " length"; });
        if (len > left())
            error(at, what() + ": length " + str(len) + " is longer than the " + str(left()) + " bytes left in the file");
        std::string_view s(reinterpret_cast<const char*>(base_ + pos), len);
        pos += len;
        return s;
    }

private:
    const std::string& path_;
    const uint8_t* base_;
    uint64_t size_;
};

// ---------------------------------------------------------------------------------------------
// Metadata values

void read_value(Cursor& c, GGUFValue& v, int depth, const Describe& what);

// An array body: element type, count, elements. `v.type` is already ARRAY.
void read_array(Cursor& c, GGUFValue& v, int depth, const Describe& what) {
    if (depth >= kMaxArrayDepth)
        c.error(c.pos, what() + ": arrays nested more than " + str(kMaxArrayDepth) + " deep are not supported");
    const uint64_t type_at = c.pos;
    const uint32_t et = c.read<uint32_t>([&] { return what() + " array element type"; });
    if (et >= kNumValueTypes) c.error(type_at, what() + ": unknown array element type " + str(et));
    const uint64_t count_at = c.pos;
    const uint64_t count = c.read<uint64_t>([&] { return what() + " array count"; });
    const auto elem_type = static_cast<GGUFValueType>(et);
    const uint64_t min_bytes = elem_type == GGUFValueType::STRING  ? 8
                             : elem_type == GGUFValueType::ARRAY   ? kMinNestedArrayBytes
                                                                   : kValueTypes[et].size;
    if (count > c.left() / min_bytes)
        c.error(count_at, what() + ": array count " + str(count) + " of " + kValueTypes[et].name +
                              " needs at least " + str(min_bytes) + " bytes per element, but only " + str(c.left()) +
                              " bytes are left");
    v.elem_type = elem_type;
    v.count = count;

    switch (elem_type) {
    case GGUFValueType::STRING:
        v.strs.reserve(count);  // 16 bytes per >= 8 bytes of file: bounded by the file size
        for (uint64_t j = 0; j < count; ++j)
            v.strs.push_back(c.read_string([&] { return what() + " element " + str(j); }));
        break;
    case GGUFValueType::ARRAY:
        v.items.reserve(std::min(count, kMaxReserve));
        for (uint64_t j = 0; j < count; ++j) {
            v.items.emplace_back();
            v.items.back().type = GGUFValueType::ARRAY;
            read_array(c, v.items.back(), depth + 1, [&] { return what() + " element " + str(j); });
        }
        break;
    case GGUFValueType::BOOL:
        for (uint64_t j = 0; j < count; ++j)
            if (c.here()[j] > 1)
                c.error(c.pos + j, what() + " element " + str(j) + ": BOOL value " + str(c.here()[j]) + " is neither 0 nor 1");
        [[fallthrough]];
    default:
        v.elems = c.here();
        c.pos += count * min_bytes;  // checked above
        break;
    }
}

void read_value(Cursor& c, GGUFValue& v, int depth, const Describe& what) {
    switch (v.type) {
    case GGUFValueType::UINT8:  v.scalar.u = c.read<uint8_t>(what); break;
    case GGUFValueType::INT8:   v.scalar.i = c.read<int8_t>(what); break;
    case GGUFValueType::UINT16: v.scalar.u = c.read<uint16_t>(what); break;
    case GGUFValueType::INT16:  v.scalar.i = c.read<int16_t>(what); break;
    case GGUFValueType::UINT32: v.scalar.u = c.read<uint32_t>(what); break;
    case GGUFValueType::INT32:  v.scalar.i = c.read<int32_t>(what); break;
    case GGUFValueType::UINT64: v.scalar.u = c.read<uint64_t>(what); break;
    case GGUFValueType::INT64:  v.scalar.i = c.read<int64_t>(what); break;
    case GGUFValueType::FLOAT32: v.scalar.f = c.read<float>(what); break;
    case GGUFValueType::FLOAT64: v.scalar.f = c.read<double>(what); break;
    case GGUFValueType::BOOL: {
        const uint64_t at = c.pos;
        const uint8_t b = c.read<uint8_t>(what);
        if (b > 1) c.error(at, what() + ": BOOL value " + str(b) + " is neither 0 nor 1");
        v.scalar.u = b;
        break;
    }
    case GGUFValueType::STRING: v.str = c.read_string(what); break;
    case GGUFValueType::ARRAY: read_array(c, v, depth, what); break;
    }
}

} // namespace

const char* gguf_value_type_name(uint32_t type) { return type < kNumValueTypes ? kValueTypes[type].name : nullptr; }
size_t gguf_value_type_size(uint32_t type) { return type < kNumValueTypes ? kValueTypes[type].size : 0; }

// ---------------------------------------------------------------------------------------------
// Opening: file system checks and the mapping

#if defined(_WIN32)
// Windows: the path is UTF-8 (as Python passes it); a read-only view of a read-only mapping.
std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path) {
    std::unique_ptr<GGUFFile> f(new GGUFFile());
    f->path_ = path;
    auto io_error = [&](const char* what) {
        fail(ErrorKind::io, std::string(what) + " GGUF file '" + path + "': Windows error " + std::to_string(GetLastError()));
    };
    const int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path.c_str(), -1, nullptr, 0);
    if (n <= 0) io_error("cannot open (the path is not UTF-8)");
    std::wstring wpath((size_t)n, L'\0');
    MultiByteToWideChar(CP_UTF8, 0, path.c_str(), -1, wpath.data(), n);
    HANDLE file = CreateFileW(wpath.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                              FILE_ATTRIBUTE_NORMAL, nullptr);
    if (file == INVALID_HANDLE_VALUE) {
        const DWORD attrs = GetFileAttributesW(wpath.c_str());
        if (attrs != INVALID_FILE_ATTRIBUTES && (attrs & FILE_ATTRIBUTE_DIRECTORY))
            fail(ErrorKind::io, "cannot open GGUF file '" + path + "': it is a directory");
        io_error("cannot open");
    }
    LARGE_INTEGER size;
    if (GetFileType(file) != FILE_TYPE_DISK || !GetFileSizeEx(file, &size)) {
        CloseHandle(file);
        fail(ErrorKind::io, "cannot open GGUF file '" + path + "': not a regular file");
    }
    f->size_ = (uint64_t)size.QuadPart;
    if (f->size_ > 0) {
        HANDLE mapping = CreateFileMappingW(file, nullptr, PAGE_READONLY, 0, 0, nullptr);
        CloseHandle(file);  // the mapping keeps the file open
        if (!mapping) io_error("cannot map");
        f->map_handle_ = mapping;
        const void* p = MapViewOfFile(mapping, FILE_MAP_READ, 0, 0, 0);
        if (!p) io_error("cannot map");
        f->base_ = static_cast<const uint8_t*>(p);
    } else {
        CloseHandle(file);
    }
    f->parse();
    return f;
}

GGUFFile::~GGUFFile() {
    if (base_) UnmapViewOfFile(base_);
    if (map_handle_) CloseHandle((HANDLE)map_handle_);
}
#else
std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path) {
    std::unique_ptr<GGUFFile> f(new GGUFFile());
    f->path_ = path;
    auto io_error = [&](const char* what) {
        fail(ErrorKind::io, std::string(what) + " GGUF file '" + path + "': " + std::strerror(errno));
    };
    f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f->fd_ < 0) io_error("cannot open");
    struct stat st;
    if (fstat(f->fd_, &st) != 0) io_error("cannot stat");
    if (S_ISDIR(st.st_mode)) fail(ErrorKind::io, "cannot open GGUF file '" + path + "': it is a directory");
    if (!S_ISREG(st.st_mode)) fail(ErrorKind::io, "cannot open GGUF file '" + path + "': not a regular file");
    f->size_ = static_cast<uint64_t>(st.st_size);
    if (f->size_ > 0) {
        void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, f->fd_, 0);
        if (p == MAP_FAILED) io_error("cannot map");
        f->base_ = static_cast<const uint8_t*>(p);
    }
    f->parse();
    return f;
}

GGUFFile::~GGUFFile() {
    if (base_) munmap(const_cast<uint8_t*>(base_), size_);
    if (fd_ >= 0) ::close(fd_);
}
#endif

const GGUFValue* GGUFFile::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GGUFTensorInfo* GGUFFile::tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------------------------------------
// Parsing: header, metadata, tensor infos, then the data section's layout

void GGUFFile::parse() {
    Cursor c(path_, base_, size_);

    // Header: magic, version, n_tensors, n_kv.
    if (size_ == 0) c.error(0, "the file is empty");
    if (size_ < 4) c.error(0, "the file is only " + str(size_) + " bytes, too short for a GGUF header (24 bytes)");
    const uint32_t magic = c.read<uint32_t>([] { return std::string("magic"); });
    if (magic != kMagic) {
        const std::string_view m(reinterpret_cast<const char*>(base_), 4);
        if (m == "lmgg" || m == "fmgg" || m == "tjgg")
            c.error(0, "this is a pre-GGUF (GGML/GGMF/GGJT) model file; convert it to GGUF with llama.cpp");
        c.error(0, "bad magic " + quoted(m) + " (expected 'GGUF'): not a GGUF file");
    }
    const uint32_t version = c.read<uint32_t>([] { return std::string("version"); });
    if (version != 0 && (version & 0xFFFF) == 0)
        c.error(4, "version field reads " + str(version) + " (byte-swapped " + str(__builtin_bswap32(version)) +
                       "): big-endian GGUF files are not supported");
    if (version == 1)
        c.error(4, "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model with a current llama.cpp");
    if (version != 2 && version != 3) c.error(4, "unsupported GGUF version " + str(version) + " (supported: 2, 3)");
    version_ = version;
    const uint64_t n_tensors = c.read<uint64_t>([] { return std::string("n_tensors"); });
    const uint64_t n_kv = c.read<uint64_t>([] { return std::string("n_kv"); });
    if (n_tensors > c.left() / kMinTensorInfoBytes)
        c.error(8, "n_tensors is " + str(n_tensors) + ", but the " + str(c.left()) + " bytes after the header hold at most " +
                       str(c.left() / kMinTensorInfoBytes) + " tensor infos");
    if (n_kv > c.left() / kMinKVBytes)
        c.error(16, "n_kv is " + str(n_kv) + ", but the " + str(c.left()) + " bytes after the header hold at most " +
                        str(c.left() / kMinKVBytes) + " key-value pairs");
    if (n_kv * kMinKVBytes + n_tensors * kMinTensorInfoBytes > c.left())  // each product <= left(): no overflow
        c.error(8, "n_tensors " + str(n_tensors) + " and n_kv " + str(n_kv) + " need more than the " + str(c.left()) +
                       " bytes after the header");

    // Metadata.
    kv_.reserve(std::min(n_kv, kMaxReserve));
    kv_index_.reserve(std::min(n_kv, kMaxReserve));
    for (uint64_t i = 0; i < n_kv; ++i) {
        const uint64_t key_at = c.pos;
        const std::string_view key = c.read_string([&] { return "metadata key (index " + str(i) + ")"; });
        auto where = [&] { return "metadata " + quoted(key) + " (index " + str(i) + ")"; };
        if (key.empty()) c.error(key_at, "metadata key (index " + str(i) + ") is empty");
        if (!valid_utf8(key)) c.error(key_at, where() + ": key is not valid UTF-8");
        auto [it, inserted] = kv_index_.emplace(std::string(key), kv_.size());
        if (!inserted)
            c.error(key_at, "duplicate metadata key " + quoted(key) + " (index " + str(i) + "; first at index " + str(it->second) + ")");
        const uint64_t type_at = c.pos;
        const uint32_t type = c.read<uint32_t>([&] { return where() + " value type"; });
        if (type >= kNumValueTypes) c.error(type_at, where() + ": unknown value type " + str(type));
        kv_.emplace_back(it->first, GGUFValue{});
        GGUFValue& v = kv_.back().second;
        v.type = static_cast<GGUFValueType>(type);
        const uint64_t value_at = c.pos;
        read_value(c, v, 0, where);

        // ggml reads general.alignment as a u32; any other type is a broken or hostile file.
        if (key == "general.alignment") {
            if (v.type != GGUFValueType::UINT32)
                c.error(type_at, "general.alignment must be UINT32, not " + std::string(kValueTypes[type].name));
            const uint64_t a = v.scalar.u;
            if (a == 0 || (a & (a - 1)) != 0 || a > kMaxAlignment)
                c.error(value_at, "general.alignment is " + str(a) + "; it must be a power of two from 1 to " + str(kMaxAlignment));
            alignment_ = a;
        }
    }

    // Tensor infos: name, n_dims, ne[n_dims], type, offset (relative to the data section).
    tensors_.reserve(std::min(n_tensors, kMaxReserve));
    tensor_index_.reserve(std::min(n_tensors, kMaxReserve));
    std::vector<uint64_t> offset_at;  // where each tensor's offset field lives, for later errors
    offset_at.reserve(std::min(n_tensors, kMaxReserve));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        const uint64_t name_at = c.pos;
        const std::string_view name = c.read_string([&] { return "tensor name (index " + str(i) + ")"; });
        auto where = [&] { return "tensor " + quoted(name) + " (index " + str(i) + ")"; };
        if (name.empty()) c.error(name_at, "tensor name (index " + str(i) + ") is empty");
        if (name.size() > kMaxNameBytes)
            c.error(name_at, where() + ": name is " + str(name.size()) + " bytes; at most " + str(kMaxNameBytes) + " are allowed");
        if (!valid_utf8(name)) c.error(name_at, where() + ": name is not valid UTF-8");
        auto [it, inserted] = tensor_index_.emplace(std::string(name), tensors_.size());
        if (!inserted)
            c.error(name_at, "duplicate tensor name " + quoted(name) + " (index " + str(i) + "; first at index " + str(it->second) + ")");

        GGUFTensorInfo t;
        t.name = it->first;
        const uint64_t dims_at = c.pos;
        const uint32_t n_dims = c.read<uint32_t>([&] { return where() + " n_dims"; });
        if (n_dims < 1 || n_dims > uint32_t(kMaxDims))
            c.error(dims_at, where() + ": n_dims is " + str(n_dims) + "; it must be 1 to " + str(kMaxDims));
        t.n_dims = static_cast<int>(n_dims);
        for (int j = 0; j < kMaxDims; ++j) t.ne[j] = 1;
        for (uint32_t j = 0; j < n_dims; ++j) {
            const uint64_t at = c.pos;
            const uint64_t d = c.read<uint64_t>([&] { return where() + " ne[" + str(j) + "]"; });
            if (d > uint64_t(INT64_MAX))
                c.error(at, where() + ": dimension ne[" + str(j) + "] is negative (" + std::to_string(int64_t(d)) + ")");
            if (d == 0) c.error(at, where() + ": dimension ne[" + str(j) + "] is zero");
            t.ne[j] = static_cast<int64_t>(d);
        }
        const uint64_t type_at = c.pos;
        const int32_t type = static_cast<int32_t>(c.read<uint32_t>([&] { return where() + " type"; }));
        // Every ggml type is read (its layout is all a file needs); whether pyllm can run it is the
        // loader's question, so `pyllm info` lists a file of i-quants it does not compute.
        const TypeLayout* layout = type_layout(type);
        if (!layout) c.error(type_at, where() + ": unknown tensor type id " + std::to_string(type));
        t.type = static_cast<Type>(type);
        const TypeLayout& tt = *layout;

        auto shape = [&] {
            std::string s = "[";
            for (int j = 0; j < t.n_dims; ++j) s += (j ? ", " : "") + std::to_string(t.ne[j]);
            return s + "]";
        };
        uint64_t n_elements = 1;
        for (int j = 0; j < kMaxDims; ++j)
            if (mul_overflows(n_elements, uint64_t(t.ne[j]), &n_elements) || n_elements > uint64_t(INT64_MAX))
                c.error(dims_at, where() + ": element count of shape " + shape() + " overflows int64");
        if (t.ne[0] % tt.block_size != 0)
            c.error(dims_at, where() + ": row length ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of " +
                                 tt.name + "'s block size " + std::to_string(tt.block_size));
        uint64_t nbytes = uint64_t(t.ne[0] / tt.block_size);
        bool overflow = mul_overflows(nbytes, tt.type_size, &nbytes);
        for (int j = 1; j < kMaxDims; ++j) overflow = overflow || mul_overflows(nbytes, uint64_t(t.ne[j]), &nbytes);
        if (overflow) c.error(dims_at, where() + ": byte size of " + tt.name + " shape " + shape() + " overflows 64 bits");
        t.nbytes = nbytes;

        offset_at.push_back(c.pos);
        t.offset = c.read<uint64_t>([&] { return where() + " offset"; });
        t.file_offset = 0;
        t.data = nullptr;
        tensors_.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment. With no tensors it may lie
    // past the end of the file; nothing is read from it then.
    data_offset_ = (c.pos + alignment_ - 1) / alignment_ * alignment_;  // pos <= size, alignment <= 2^24

    for (size_t i = 0; i < tensors_.size(); ++i) {
        GGUFTensorInfo& t = tensors_[i];
        auto where = [&] { return "tensor " + quoted(t.name) + " (index " + str(i) + ")"; };
        if (t.offset % alignment_ != 0)
            c.error(offset_at[i], where() + ": offset " + str(t.offset) + " is not a multiple of the alignment " + str(alignment_));
        uint64_t start = 0, end = 0;
        if (add_overflows(data_offset_, t.offset, &start) || start > size_)
            c.error(offset_at[i], where() + ": offset " + str(t.offset) + " (data section at byte " + str(data_offset_) +
                                      ") is past the end of the file (size " + str(size_) + ")");
        if (add_overflows(start, t.nbytes, &end) || end > size_)
            c.error(offset_at[i], where() + ": data of " + str(t.nbytes) + " bytes at file offset " + str(start) +
                                      " runs past the end of the file (size " + str(size_) + ")");
        t.file_offset = start;
        t.data = base_ + start;
    }

    // No two tensors may share bytes. Files list tensors in data order, but that is not required.
    std::vector<size_t> order(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return tensors_[a].file_offset < tensors_[b].file_offset; });
    for (size_t k = 1; k < order.size(); ++k) {
        const GGUFTensorInfo& prev = tensors_[order[k - 1]];
        const GGUFTensorInfo& cur = tensors_[order[k]];
        if (prev.file_offset + prev.nbytes > cur.file_offset) {
            // Blame the one listed later in the file; name the other.
            const size_t later = std::max(order[k - 1], order[k]);
            const size_t other = later == order[k] ? order[k - 1] : order[k];
            c.error(offset_at[later], "tensor " + quoted(tensors_[later].name) + " (index " + str(later) +
                                          "): data overlaps tensor " + quoted(tensors_[other].name) +
                                          " (offsets " + str(prev.offset) + " + " + str(prev.nbytes) + " bytes > " +
                                          str(cur.offset) + ")");
        }
    }
}

} // namespace pyllm
