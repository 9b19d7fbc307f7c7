//! Key export for Wireshark (written only when the operator asks for it): see `Session::keylog`.
