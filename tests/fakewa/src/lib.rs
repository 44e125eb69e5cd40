//! A fake WhatsApp Web server for whatisup's tests and benchmarks.
