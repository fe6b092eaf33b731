/* Entry points of Starling's test guest.
 * _start32: PVH entry (32-bit protected mode, paging off, EBX = hvm_start_info): builds an
 *           identity map of the first GiB, enters long mode and continues at _start64.
 * _start64: the ELF entry for 64-bit boot (long mode, RSI = Linux zero page). */
#ifndef NO_PVH_NOTE
        .section .note.pvh, "a"
        .p2align 2
        .long 4                 /* name size */
        .long 4                 /* desc size */
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long _start32
#endif

        .section .text.start, "ax"
        .code32
        .globl _start32
_start32:
        cli
        mov %ebx, %edi                  /* boot info for main */
        /* Identity map of 4 GiB (the device window is at 3.25 GiB): PML4[0] -> PDPT,
         * PDPT[k] -> PD k, PD entries i * 2 MiB, present|write|large. */
        lea pml4, %eax
        lea pdpt, %ecx
        or $3, %ecx
        mov %ecx, (%eax)
        lea pdpt, %eax
        lea pd, %ecx
        or $3, %ecx
        xor %edx, %edx
3:      mov %ecx, (%eax,%edx,8)
        add $4096, %ecx
        inc %edx
        cmp $4, %edx
        jne 3b
        lea pd, %eax
        xor %ecx, %ecx
1:      mov %ecx, %edx
        shl $21, %edx
        or $0x83, %edx
        mov %edx, (%eax,%ecx,8)
        mov %ecx, %edx
        shr $11, %edx
        mov %edx, 4(%eax,%ecx,8)
        inc %ecx
        cmp $2048, %ecx
        jne 1b
        lea pml4, %eax
        mov %eax, %cr3
        mov %cr4, %eax
        or $0x20, %eax                  /* PAE */
        mov %eax, %cr4
        mov $0xc0000080, %ecx           /* EFER */
        rdmsr
        or $0x100, %eax                 /* LME */
        wrmsr
        mov %cr0, %eax
        or $0x80000001, %eax            /* PG | PE */
        mov %eax, %cr0
        lgdt gdt_ptr
        ljmp $8, $from32

        .code64
from32:
        mov $16, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $1, %esi                    /* entered through PVH */
        jmp common

        .globl _start64
_start64:
        cli
        mov %rsi, %rdi                  /* zero page */
        /* The monitor maps only the first GiB: build the 4 GiB map here too. */
        lea pdpt(%rip), %rax
        lea pd(%rip), %rcx
        or $3, %rcx
        xor %edx, %edx
4:      mov %rcx, (%rax,%rdx,8)
        add $4096, %rcx
        inc %edx
        cmp $4, %edx
        jne 4b
        lea pml4(%rip), %rax
        lea pdpt(%rip), %rcx
        or $3, %rcx
        mov %rcx, (%rax)
        lea pd(%rip), %rax
        xor %ecx, %ecx
5:      mov %rcx, %rdx
        shl $21, %rdx
        or $0x83, %rdx
        mov %rdx, (%rax,%rcx,8)
        inc %ecx
        cmp $2048, %ecx
        jne 5b
        lea pml4(%rip), %rax
        mov %rax, %cr3
        xor %esi, %esi
common:
        lea stack_top(%rip), %rsp
        call guest_main
2:      hlt
        jmp 2b

        .section .rodata
        .p2align 3
gdt:    .quad 0
        .quad 0x00af9b000000ffff        /* 64-bit code */
        .quad 0x00cf93000000ffff        /* data */
gdt_ptr:
        .word 23
        .long gdt

        .section .bss
        .p2align 12
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4 * 4096
        .skip 16384
stack_top:
        .section .note.GNU-stack, "", @progbits
