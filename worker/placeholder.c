/* placeholder */ int loom_worker_placeholder_;
