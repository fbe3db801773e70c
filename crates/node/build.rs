//! Build script: lets napi-build emit the link arguments a Node-API addon needs
//! (unresolved Node-API symbols, `-z nodelete` on glibc).

fn main() {
    napi_build::setup();
}
