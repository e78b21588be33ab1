// GGUF reader: maps a file, validates every count, length, type id and offset against the file's
// size before using it, and exposes metadata values and zero-copy tensor views.
// Not a writer (Python writes files with the `gguf` package), not a model loader (see model/).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "quant/types.h"

namespace pyllm {

enum class GGUFValueType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// "UINT32", "STRING", "ARRAY", ...; nullptr for ids that are not value types.
const char* gguf_value_type_name(uint32_t type);
// Bytes of one fixed-size value (1..8); 0 for STRING, ARRAY and unknown ids.
size_t gguf_value_type_size(uint32_t type);

// One metadata value. Strings and arrays of scalars point into the mapping (zero copy), so they
// live as long as the GGUFFile. `elems` is raw little-endian data and may be unaligned: memcpy
// each element out (or use the typed getters of the caller's choice), never cast the pointer.
struct GGUFValue {
    GGUFValueType type = GGUFValueType::UINT8;
    union {
        uint64_t u;   // UINT8/16/32/64, BOOL
        int64_t i;    // INT8/16/32/64
        double f;     // FLOAT32/64
    } scalar{0};
    std::string_view str;                 // STRING
    // ARRAY:
    GGUFValueType elem_type = GGUFValueType::UINT8;
    uint64_t count = 0;                   // number of elements
    const uint8_t* elems = nullptr;       // arrays of fixed-size scalars: raw little-endian data
    std::vector<std::string_view> strs;   // arrays of strings
    std::vector<GGUFValue> items;         // arrays of arrays (each item has type ARRAY)
};

struct GGUFTensorInfo {
    std::string name;
    Type type;                 // any ggml type (type_layout); type_is_known() says whether pyllm runs it
    int n_dims;
    int64_t ne[4];             // ne[0] is the row length (contiguous); unused dims are 1
    uint64_t offset;           // from the start of the data section
    uint64_t file_offset;      // absolute offset in the file
    uint64_t nbytes;
    const uint8_t* data;       // into the mapping
    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

class GGUFFile {
public:
    // Opens and validates `path`. Throws Error(ErrorKind::gguf) naming the field, index and byte
    // offset of the first problem, Error(ErrorKind::io) if it cannot be read.
    static std::unique_ptr<GGUFFile> open(const std::string& path);
    ~GGUFFile();
    GGUFFile(const GGUFFile&) = delete;
    GGUFFile& operator=(const GGUFFile&) = delete;

    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t file_size() const { return size_; }
    const std::string& path() const { return path_; }

    // Metadata in file order.
    const std::vector<std::pair<std::string, GGUFValue>>& metadata() const { return kv_; }
    const GGUFValue* find(const std::string& key) const;  // nullptr if absent

    const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
    const GGUFTensorInfo* tensor(const std::string& name) const;  // nullptr if absent

private:
    GGUFFile() = default;
    void parse();  // validates the mapping and fills the members below
    std::string path_;
    int fd_ = -1;                // POSIX
#if defined(_WIN32)
    void* map_handle_ = nullptr; // Windows: the file mapping object (the view is base_)
#endif
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, GGUFValue>> kv_;
    std::unordered_map<std::string, size_t> kv_index_;
    std::vector<GGUFTensorInfo> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
};

} // namespace pyllm
