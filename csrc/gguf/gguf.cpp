// PLACEHOLDER until the GGUF reader lands.
#include "gguf/gguf.h"
#include "core/common.h"
namespace pyllm {
std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path) { fail(ErrorKind::gguf, "GGUF reader not implemented yet"); }
GGUFFile::~GGUFFile() {}
const GGUFValue* GGUFFile::find(const std::string&) const { return nullptr; }
const GGUFTensorInfo* GGUFFile::tensor(const std::string&) const { return nullptr; }
}
