using Xunit;

// The interop tests start real peers (nbdkit, qemu-nbd, node, curl, qemu-img) and kill them on disposal; run them one
// class at a time so one class's peer start-up or tear-down can never race another's (an nbdkit started while another
// class tore down its peers was seen to die at start-up).
[assembly: CollectionBehavior(DisableTestParallelization = true)]
